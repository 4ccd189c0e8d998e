import Logging
import ServiceLifecycle
import Synchronization
import UnixSignals

/// A replica's shutdown in the order a load balancer needs: on SIGTERM (or SIGINT) it keeps
/// listening, `/readyz` answers 503 `draining` so the replica leaves rotation, new computations
/// are refused with 503, `Retry-After` and `Connection: close` (a client or proxy retries them
/// elsewhere), the computations already admitted finish, and only then does the server stop
/// (closing its listener and idle connections) and the process exit.
public final class Drain: Sendable {
    private let state = Atomic<Bool>(false)
    private let pool = Mutex<ComputePool?>(nil)

    /// A drain not begun.
    public init() {}

    /// Whether the drain has begun.
    public var isDraining: Bool { state.load(ordering: .relaxed) }

    /// Begins the drain.
    public func begin() { state.store(true, ordering: .relaxed) }

    /// Computations admitted and not yet ended.
    var pending: Int { pool.withLock { $0?.pendingCount ?? 0 } }

    /// The compute pool whose work the drain waits for (set when the application is built).
    func attach(_ pool: ComputePool) { self.pool.withLock { $0 = pool } }

    /// The answer to a computation that arrives during the drain.
    var refusal: Problem {
        Problem(
            .serviceUnavailable, title: "Shutting down", detail: "this replica is draining before it stops; retry on another",
            headers: [.retryAfter: "1", .connection: "close"])
    }
}

/// Waits for SIGTERM or SIGINT, drains (``Drain``), and returns when the admitted work has
/// ended or `bound` has passed; run it with `successTerminationBehavior: .gracefullyShutdownGroup`
/// so that its return stops the server gracefully.
public struct DrainService: Service {
    let drain: Drain
    let bound: Duration
    let logger: Logger

    /// A drain service; `bound` caps the wait for admitted work (the deadline plus a margin).
    public init(drain: Drain, bound: Duration, logger: Logger) {
        self.drain = drain
        self.bound = bound
        self.logger = logger
    }

    /// Runs until a signal has come and the drain has ended.
    public func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sigterm, .sigint)
        var received: UnixSignal?
        for await signal in signals.cancelOnGracefulShutdown() {
            received = signal
            break
        }
        guard let received else { return }
        drain.begin()
        logger.info("draining: new computations are refused, admitted ones finish", metadata: ["signal": "\(received)", "pending": "\(drain.pending)"])
        let clock = ContinuousClock()
        let end = clock.now + bound
        while drain.pending > 0, clock.now < end {
            try? await Task.sleep(for: .milliseconds(20))
        }
        logger.info("drained; stopping", metadata: ["pending": "\(drain.pending)"])
    }
}
