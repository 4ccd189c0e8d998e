import GradCodec
import GradCore
import HTTPTypes
import NIOCore
import NIOHTTPTypes
import Synchronization

/// Per-connection protections, one handler in each HTTP/1 pipeline:
///
/// - **Connection cap** (`--max-connections`): connections past the cap are closed at once.
/// - **Expect: 100-continue** is answered only once the request is admitted: the handler strips
///   `Expect` and sends `100 Continue` when the request pipeline asks for the body
///   (``ConnectionEvent/sendContinue``). A request answered without reading its body (503, 413,
///   401, …) closes the connection after the answer, so a client never sends a body nobody reads.
/// - **Body deadline** (`--body-timeout`): a request whose body has not fully arrived that long
///   after its head is answered 408 (or, once an answer has started, cut) and the connection closed.
/// - **Write deadline** (`--write-timeout`): an answer the client does not read within that time
///   closes the connection.
/// - **Answers hold their memory** (``ConnectionEvent/hold(_:)``) until written to the socket, so
///   clients that do not read cannot take the process past its memory budget.
/// - **Client gone**: when the connection closes (or the client half-closes) while a computation
///   is bound to it (``ConnectionEvent/bind(_:)``), its cancellation token is set, so the
///   computation stops at its next checkpoint.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// Events a request handler sends down its connection (`channel.triggerUserOutboundEvent`).
    enum ConnectionEvent: Sendable {
        /// The request is admitted: send `100 Continue` if the client waits for it.
        case sendContinue
        /// The computation for the current request; cancelled if the client goes away.
        case bind(Cancellation)
        /// The request's memory, held until its answer has been written to the socket (not just
        /// queued: a 45 MB answer to a client that does not read sits in the channel's buffer).
        case hold(MemoryBudget.Reservation)
    }

    /// Connections open now, shared by every guard of one server.
    final class Counter: Sendable {
        let limit: Int
        private let open = Atomic(0)
        init(limit: Int) { self.limit = limit }
        var current: Int { open.load(ordering: .relaxed) }
        func enter() -> Bool {
            let n = open.wrappingAdd(1, ordering: .relaxed).newValue
            if n > limit {
                open.wrappingSubtract(1, ordering: .relaxed)
                return false
            }
            return true
        }
        func leave() { open.wrappingSubtract(1, ordering: .relaxed) }
    }

    private let counter: Counter
    private let bodyTimeout: TimeAmount
    private let writeTimeout: TimeAmount
    private var counted = false
    private var awaitingContinue = false
    private var readingBody = false
    private var responseStarted = false
    private var closeAfterResponse = false
    private var bodyTimer: Scheduled<Void>?
    private var writeTimer: Scheduled<Void>?
    private var token: Cancellation?
    private var held: MemoryBudget.Reservation?
    private var draining: MemoryBudget.Reservation?
    private var awaitingDrain = false
    private var closeWhenDrained = false
    private var gone = false

    init(counter: Counter, bodyTimeout: Duration, writeTimeout: Duration) {
        self.counter = counter
        self.bodyTimeout = .init(bodyTimeout)
        self.writeTimeout = .init(writeTimeout)
    }

    // MARK: connection cap

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { enter(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        enter(context)
        context.fireChannelActive()
    }

    private func enter(_ context: ChannelHandlerContext) {
        guard !counted else { return }
        if counter.enter() {
            counted = true
        } else {
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        clientGone()
        held?.release()
        held = nil
        draining?.release()
        draining = nil
        bodyTimer?.cancel()
        writeTimer?.cancel()
        if counted {
            counter.leave()
            counted = false
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if counted {
            counter.leave()
            counted = false
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .inputClosed? = event as? ChannelEvent { clientGone() }
        context.fireUserInboundEventTriggered(event)
    }

    private func clientGone() {
        gone = true
        token?.cancel(.clientGone)
    }

    // MARK: requests

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(var head):
            responseStarted = false
            closeAfterResponse = false
            awaitingContinue = head.headerFields[.expect]?.lowercased() == "100-continue"
            head.headerFields[.expect] = nil
            readingBody = true
            bodyTimer?.cancel()
            bodyTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: bodyTimeout) { [self] in
                bodyDeadlinePassed(context)
            }
            context.fireChannelRead(wrapInboundOut(.head(head)))
        case .end:
            readingBody = false
            awaitingContinue = false
            bodyTimer?.cancel()
            bodyTimer = nil
            context.fireChannelRead(data)
        case .body:
            context.fireChannelRead(data)
        }
    }

    private func bodyDeadlinePassed(_ context: ChannelHandlerContext) {
        bodyTimer = nil
        guard readingBody, context.channel.isActive else { return }
        clientGone()
        if !responseStarted {
            let problem = Problem(
                .requestTimeout, title: "Body too slow",
                detail: "the request body did not arrive within \(bodyTimeout.nanoseconds / 1_000_000_000) s (--body-timeout)")
            let body = problem.json
            let head = HTTPResponse(
                status: .requestTimeout,
                headerFields: [.contentType: "application/problem+json", .contentLength: "\(body.count)", .connection: "close"])
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(bytes: body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
        context.close(promise: nil)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let event = event as? ConnectionEvent else {
            return context.triggerUserOutboundEvent(event, promise: promise)
        }
        switch event {
        case .sendContinue:
            if awaitingContinue, !responseStarted {
                awaitingContinue = false
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
            }
        case .bind(let t):
            token = t
            if gone || !context.channel.isActive { t.cancel(.clientGone) }
        case .hold(let reservation):
            held?.release()
            held = reservation
            if !context.channel.isActive {
                reservation.release()
                held = nil
            }
        }
        promise?.succeed(())
    }

    // MARK: answers

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            if head.status.kind != .informational {
                responseStarted = true
                // A final answer to a client still waiting for 100, or one still sending a body
                // nobody will read: close after the answer instead of reading the body.
                if awaitingContinue || readingBody || head.headerFields[.connection]?.lowercased() == "close" { closeAfterResponse = true }
                if closeAfterResponse {
                    var head = head
                    head.headerFields[.connection] = "close"
                    return context.write(wrapOutboundOut(.head(head)), promise: promise)
                }
            }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            token = nil
            let written = promise ?? context.eventLoop.makePromise()
            // The answer counts as written once its bytes have left the channel's buffer: the
            // write promise alone is not enough (an empty end part completes before the body
            // queued ahead of it has drained), so wait for the channel to be writable again.
            draining = held
            held = nil
            awaitingDrain = true
            writeTimer?.cancel()
            writeTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: writeTimeout) { [self] in
                writeTimer = nil
                if awaitingDrain { context.close(promise: nil) }
            }
            closeWhenDrained = closeAfterResponse
            if closeAfterResponse {
                context.writeAndFlush(data, promise: written)
            } else {
                context.write(data, promise: written)
            }
            written.futureResult.whenComplete { [self] _ in
                if context.channel.isWritable { drained(context) }
            }
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, awaitingDrain { drained(context) }
        context.fireChannelWritabilityChanged()
    }

    /// The last answer has left the channel's buffer: its memory and its write deadline end
    /// (and the connection, when the answer said so: closing earlier would cut the answer).
    private func drained(_ context: ChannelHandlerContext) {
        guard awaitingDrain else { return }
        awaitingDrain = false
        writeTimer?.cancel()
        writeTimer = nil
        draining?.release()
        draining = nil
        if closeWhenDrained {
            closeWhenDrained = false
            context.close(promise: nil)
        }
    }
}
