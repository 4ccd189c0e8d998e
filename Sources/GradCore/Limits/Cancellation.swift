import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// A flag that stops a computation at its next checkpoint: set when a request's deadline passes
/// or its client goes away. The core checks it between layers and row chunks
/// (``checkpoint()``), so a cancelled computation gives its thread and its memory back within
/// one layer's time instead of running to the end for nobody.
///
/// The token a computation obeys is the *current* one of its thread (``run(_:_:)`` installs it);
/// ``Parallel`` hands it on to the threads of row chunks. Code that never installs one never stops.
public final class Cancellation: Sendable {
    /// Why a computation was stopped.
    public enum Reason: Int, Sendable {
        case deadline = 1
        case clientGone = 2
        case shutdown = 3
    }

    private let state = Atomic<Int>(0)

    /// A token that is neither cancelled nor past a deadline.
    public init() {}

    /// Asks the computation to stop (the first reason given wins).
    public func cancel(_ reason: Reason) {
        _ = state.compareExchange(expected: 0, desired: reason.rawValue, ordering: .relaxed)
    }

    /// The reason, once cancelled.
    public var reason: Reason? { Reason(rawValue: state.load(ordering: .relaxed)) }

    /// Throws the error for the reason, once cancelled.
    public func check() throws(GradError) {
        switch reason {
        case nil: return
        case .deadline?: throw .deadlineExceeded
        case .clientGone?, .shutdown?: throw .cancelled
        }
    }

    /// Runs `body` with `token` as this thread's current token (restoring the previous one after).
    public static func run<R, E: Error>(_ token: Cancellation?, _ body: () throws(E) -> R) throws(E) -> R {
        let previous = install(token)
        defer { install(previous) }
        return try body()
    }

    /// Makes `token` this thread's current token; returns the previous one (to install again after).
    @discardableResult
    public static func install(_ token: Cancellation?) -> Cancellation? {
        let previous = current
        setCurrent(token)
        return previous
    }

    /// The token of this thread, if any.
    public static var current: Cancellation? {
        guard let p = pthread_getspecific(key) else { return nil }
        return Unmanaged<Cancellation>.fromOpaque(p).takeUnretainedValue()
    }

    /// Throws when this thread's computation was cancelled. Cheap: one thread-local read and one
    /// relaxed atomic load.
    @inline(__always)
    public static func checkpoint() throws(GradError) {
        guard let p = pthread_getspecific(key) else { return }
        try Unmanaged<Cancellation>.fromOpaque(p).takeUnretainedValue().check()
    }

    private static func setCurrent(_ token: Cancellation?) {
        if let old = pthread_getspecific(key) { Unmanaged<Cancellation>.fromOpaque(old).release() }
        pthread_setspecific(key, token.map { Unmanaged.passRetained($0).toOpaque() })
    }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()
}
