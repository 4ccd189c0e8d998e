import Hummingbird
import NIOCore

/// The request context of every route: Hummingbird's core context plus the request's channel,
/// through which the request pipeline talks to its ``ConnectionGuard`` (100-continue once
/// admitted, cancellation when the client goes away).
public struct GradRequestContext: RequestContext {
    /// Hummingbird's per-request storage (logger, parameters).
    public var coreContext: CoreRequestContextStorage
    /// The connection (nil where a test harness has none).
    public let channel: (any Channel)?

    /// Creates the context for one request from its channel.
    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}
