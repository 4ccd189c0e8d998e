import GradCodec
import GradCore
import HTTPTypes
import NIOCore
import NIOHTTPTypes
import Prometheus
import Synchronization

/// Per-connection protections, one handler in each HTTP/1 pipeline:
///
/// - **Connection cap** (`--max-connections`): connections past the cap are closed at once.
/// - **Expect: 100-continue** is answered only once the request is admitted: the handler strips
///   `Expect` and sends `100 Continue` when the request pipeline asks for the body
///   (``ConnectionEvent/sendContinue``). A request answered while its client still waits for the
///   100 (503, 413, 401, …) closes the connection after the answer, so that client never sends a
///   body nobody reads. A client already sending its body gets the answer and the connection
///   reads and discards the rest (closing under it could reset the answer away).
/// - **Body deadline** (`--body-timeout`): a request whose body has not fully arrived that long
///   after it became the one being handled is answered 408 (or, once an answer has started, cut)
///   and the connection closed.
/// - **Write deadline** (`--write-timeout`): an answer that makes no progress for that long (a
///   client that does not read; large answers are written in 1 MiB slices so that a slow reader
///   still shows progress) closes the connection.
/// - **Answers hold their memory** (``ConnectionEvent/hold(_:)``) until written to the socket
///   (the end part's write promise completes after every byte before it), so clients that do
///   not read cannot take the process past its memory budget.
/// - **Write time** (`gradserve_http_response_write_seconds`): from an answer's head to its last
///   byte written to the socket, the one phase `Server-Timing` cannot carry (it leaves before).
/// - **Client gone**: when the connection closes (or the client half-closes) while a computation
///   is bound to it (``ConnectionEvent/bind(_:)``), its cancellation token is set, so the
///   computation stops at its next checkpoint.
///
/// Requests may be pipelined: their state is kept in arrival order, and the one at the front is
/// the one being handled (Hummingbird answers them in order).
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

    /// One request read from the connection, not yet answered to the end.
    private struct Pending {
        var awaitingContinue: Bool
        var bodyComplete = false
    }

    private let counter: Counter
    private let bodyTimeout: TimeAmount
    private let writeTimeout: TimeAmount
    private var counted = false
    private var requests: [Pending] = []
    private var responseStarted = false
    private var closeAfterResponse = false
    private var bodyTimer: Scheduled<Void>?
    private var writeTimer: Scheduled<Void>?
    private var unwritten = 0
    private var token: Cancellation?
    private var held: MemoryBudget.Reservation?
    private var gone = false
    private let writeDuration: DurationHistogram?
    private var answerStart: ContinuousClock.Instant?

    init(counter: Counter, bodyTimeout: Duration, writeTimeout: Duration, writeDuration: DurationHistogram? = nil) {
        self.counter = counter
        self.bodyTimeout = .init(bodyTimeout)
        self.writeTimeout = .init(writeTimeout)
        self.writeDuration = writeDuration
    }

    // MARK: connection cap

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { _ = enter(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        guard enter(context) else { return }
        context.fireChannelActive()
    }

    /// Counts the connection once; false (and closing it) past the cap.
    private func enter(_ context: ChannelHandlerContext) -> Bool {
        if counted { return true }
        if counter.enter() {
            counted = true
            return true
        }
        context.close(promise: nil)
        return false
    }

    func channelInactive(context: ChannelHandlerContext) {
        clientGone()
        held?.release()
        held = nil
        bodyTimer?.cancel()
        writeTimer?.cancel()
        writeTimer = nil
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
            let expects = head.headerFields[.expect]?.lowercased() == "100-continue"
            head.headerFields[.expect] = nil
            requests.append(Pending(awaitingContinue: expects))
            if requests.count == 1 { startBodyTimer(context) }
            context.fireChannelRead(wrapInboundOut(.head(head)))
        case .end:
            if let i = requests.lastIndex(where: { !$0.bodyComplete }) {
                requests[i].bodyComplete = true
                requests[i].awaitingContinue = false
                if i == 0 {
                    bodyTimer?.cancel()
                    bodyTimer = nil
                }
            }
            context.fireChannelRead(data)
        case .body:
            context.fireChannelRead(data)
        }
    }

    /// The deadline for the body of the request being handled (the front one), if still unread.
    private func startBodyTimer(_ context: ChannelHandlerContext) {
        bodyTimer?.cancel()
        bodyTimer = nil
        guard let front = requests.first, !front.bodyComplete else { return }
        bodyTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: bodyTimeout) { [self] in
            bodyDeadlinePassed(context)
        }
    }

    private func bodyDeadlinePassed(_ context: ChannelHandlerContext) {
        bodyTimer = nil
        guard let front = requests.first, !front.bodyComplete, context.channel.isActive else { return }
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
            if !requests.isEmpty, requests[0].awaitingContinue, !responseStarted {
                requests[0].awaitingContinue = false
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
        case .head(var head):
            if head.status.kind != .informational {
                responseStarted = true
                answerStart = .now
                // A final answer to a client still waiting for 100 Continue: it will not send the
                // body, so close after the answer instead of waiting for one.
                let waiting = requests.first?.awaitingContinue ?? false
                closeAfterResponse = waiting || head.headerFields[.connection]?.lowercased() == "close"
                if closeAfterResponse { head.headerFields[.connection] = "close" }
                return context.write(wrapOutboundOut(.head(head)), promise: promise)
            }
            context.write(data, promise: promise)
        case .body(let buffer):
            // Large answers go out in 1 MiB slices (views, no copy), so each written slice shows
            // progress: the write deadline is for a client that stops reading, not a slow one.
            guard buffer.readableBytes > Self.slice else { return context.write(data, promise: promise) }
            var rest = buffer
            while rest.readableBytes > 0, let part = rest.readSlice(length: min(Self.slice, rest.readableBytes)) {
                let last = rest.readableBytes == 0
                let done = (last ? promise : nil) ?? context.eventLoop.makePromise()
                done.futureResult.whenSuccess { [self] in if unwritten > 0 { armWriteTimer(context) } }
                context.write(wrapOutboundOut(.body(part)), promise: done)
            }
        case .end:
            token = nil
            let reservation = held
            held = nil
            let close = closeAfterResponse
            let started = answerStart
            answerStart = nil
            responseStarted = false
            closeAfterResponse = false
            if !requests.isEmpty { requests.removeFirst() }
            // The next pipelined request is now the one being handled: its body deadline starts.
            startBodyTimer(context)
            let written = promise ?? context.eventLoop.makePromise()
            // Pending writes complete in order, so the end part's promise completes once every
            // byte of the answer has been written to the socket.
            unwritten += 1
            armWriteTimer(context)
            written.futureResult.whenComplete { [self] _ in
                unwritten -= 1
                if unwritten == 0 {
                    writeTimer?.cancel()
                    writeTimer = nil
                }
                reservation?.release()
                if let started { writeDuration?.record(.now - started) }
                if close { context.close(promise: nil) }
            }
            if close {
                context.writeAndFlush(data, promise: written)
            } else {
                context.write(data, promise: written)
            }
        }
    }

    /// Bytes of an answer written at a time (see the body case of ``write(context:data:promise:)``).
    private static var slice: Int { 1 << 20 }

    /// (Re)starts the write deadline: `--write-timeout` without progress on the answers still
    /// unwritten closes the connection.
    private func armWriteTimer(_ context: ChannelHandlerContext) {
        writeTimer?.cancel()
        writeTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: writeTimeout) { [self] in
            writeTimer = nil
            if unwritten > 0 { context.close(promise: nil) }
        }
    }
}
