import GradCore
import Hummingbird
import NIOPosix
import Prometheus
import Synchronization

/// A bounded pool of compute threads. Compute never runs on Swift's cooperative pool, and on the
/// event loops only when it is small and alone (``admitAlone()``), so health checks answer while a
/// long Jacobian runs.
///
/// At most `workers` jobs run at once and at most `maxQueued` wait; past that, ``admit()``
/// refuses with 503 and `Retry-After`. A job holds its place (and its memory reservation) until
/// it really ends: at its deadline the caller is answered 504 at once and the job's cancellation
/// token is set, so the computation stops at its next checkpoint (between layers) and only then
/// gives its thread, its place and its memory back. `/readyz` and `/metrics` count it until then.
public final class ComputePool: Sendable {
    private let threads: NIOThreadPool
    private let workers: Int
    private let maxQueued: Int
    /// Row chunks per computation (`--threads-per-request`): each job runs inside
    /// ``Parallel/run(threads:_:)`` with it.
    let threadsPerJob: Int
    private let pending = Mutex(0)
    private let finished = Atomic<Int>(0)
    private let inFlightGauge: Gauge?
    private let inlineCounter: Counter?
    /// The deadlines of the running and queued jobs (one thread for all).
    private let deadlines = DeadlineTimer()

    /// Starts `workers` threads; each job splits its rows into `threadsPerJob` chunks.
    public init(workers: Int, maxQueued: Int, threadsPerJob: Int = 1, inline: Bool = false, metrics: PrometheusCollectorRegistry? = nil) {
        self.workers = max(1, workers)
        self.inline = inline
        self.threadsPerJob = max(1, threadsPerJob)
        self.maxQueued = max(0, maxQueued)
        threads = NIOThreadPool(numberOfThreads: self.workers)
        threads.start()
        inFlightGauge = metrics?.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "gradserve", subsystem: "compute", metricName: "pending", unitName: "", helpText: "Compute jobs running or queued"))
        inlineCounter = metrics?.makeCounter(
            descriptor: MetricNameDescriptor(
                namespace: "gradserve", subsystem: "compute", metricName: "inline", unitName: "total",
                helpText: "Requests computed (or refused) on their connection's event loop: small, with no other computation running (--inline-ms)"))
    }

    /// Whether a job may run on its caller's thread (``admitAlone()``).
    let inline: Bool

    /// Jobs running or waiting now (including cancelled ones that have not stopped yet).
    public var pendingCount: Int { pending.withLock { $0 } }

    /// Jobs ended since start.
    public var finishedCount: Int { finished.load(ordering: .relaxed) }

    /// Running plus queued jobs the pool accepts.
    public var capacity: Int { workers + maxQueued }

    /// Whether a new job would be admitted now (checked before a body is read).
    public var hasRoom: Bool { pendingCount < capacity }

    /// Stops the threads after the jobs already submitted.
    public func shutdown() async throws {
        try await threads.shutdownGracefully()
        deadlines.stop()
    }

    /// A place among the running and queued jobs. Its holder (a ``ComputeSession``) runs one job on
    /// it, or several (a streamed answer); the place is given back once the holder is done with it
    /// (``abandon()``) and no job of it runs any more: a job answered 504 or left by its client
    /// holds the place until it really ends.
    public final class Ticket: Sendable {
        private let pool: ComputePool
        private let released = Atomic(false)
        private let jobs = Mutex((running: 0, abandoned: false))

        fileprivate init(pool: ComputePool) { self.pool = pool }

        fileprivate func jobSubmitted() { jobs.withLock { $0.running += 1 } }

        fileprivate func jobEnded() {
            let last = jobs.withLock { s -> Bool in
                s.running -= 1
                return s.abandoned && s.running == 0
            }
            if last { release() }
        }

        /// The holder is done with the place: given back now, or when its running job ends.
        public func abandon() {
            let idle = jobs.withLock { s -> Bool in
                s.abandoned = true
                return s.running == 0
            }
            if idle { release() }
        }

        /// Gives the place back (idempotent).
        private func release() {
            guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
            pool.pending.withLock { $0 -= 1 }
            pool.finished.add(1, ordering: .relaxed)
            pool.inFlightGauge?.set(Double(pool.pendingCount))
        }
    }

    /// Takes a place, or refuses with 503 and `Retry-After` when the pool is full.
    public func admit() throws -> Ticket {
        guard let ticket = take(when: { $0 < workers + maxQueued }) else { throw busy() }
        return ticket
    }

    /// A place, when `allowed` holds for the places taken now (checked and taken under one lock).
    private func take(when allowed: (Int) -> Bool) -> Ticket? {
        let taken = pending.withLock { n -> Bool in
            guard allowed(n) else { return false }
            n += 1
            return true
        }
        guard taken else { return nil }
        inFlightGauge?.set(Double(pendingCount))
        return Ticket(pool: self)
    }

    /// Takes a place only when no other job is running or queued, for a computation to run on the
    /// caller's thread (``runInline(_:deadline:token:_:)``): nil otherwise, or when jobs are split
    /// into row chunks.
    ///
    /// Taken under the same lock as every place, so at most one inline job runs in the process at a
    /// time, and only while the compute threads are idle: an event loop computes a small request
    /// (``ServerConfiguration/inlineMilliseconds``) instead of waking a compute thread and being woken
    /// back, which costs 0.1-0.3 ms of a 2 ms request on this machine (two wake-ups, and the thread
    /// computing on a core whose caches do not hold the body just received). Whatever arrives
    /// meanwhile goes to the compute threads as usual; a health check on the same loop waits for
    /// the one inline job at most.
    public func admitAlone() -> Ticket? {
        guard threadsPerJob == 1, inline else { return nil }
        return take(when: { $0 == 0 })
    }

    /// The 503 of a full pool.
    func busy() -> Problem {
        Problem(
            .serviceUnavailable, title: "Server busy", detail: "\(workers) computations are running and \(maxQueued) are queued; retry shortly",
            headers: [.retryAfter: "1"])
    }

    /// Runs `body` on a compute thread with `token` as its cancellation token, passing it the
    /// seconds it waited for the thread. The job counts on `ticket` until it ends, whatever the
    /// caller was answered; the ticket's holder gives the place back (``Ticket/abandon()``). (Its
    /// memory reservation lives as long as the job or the answer needs it: see ``RequestPipeline``.)
    public func run<T: Sendable>(
        _ ticket: Ticket, deadline: ContinuousClock.Instant, token: Cancellation,
        _ body: @escaping @Sendable (_ queueSeconds: Double) throws -> T
    ) async throws -> T {
        let submitted = ContinuousClock.now
        let once = OnceContinuation<T>()
        ticket.jobSubmitted()
        return try await withCheckedThrowingContinuation { continuation in
            once.set(continuation)
            let chunks = threadsPerJob
            threads.submit { state in
                defer { ticket.jobEnded() }
                guard state == .active else {
                    return once.resume(throwing: Problem(.serviceUnavailable, title: "Shutting down", detail: "the server is stopping"))
                }
                let start = ContinuousClock.now
                if start >= deadline { token.cancel(.deadline) }
                do {
                    try token.check()
                    let queued = Stopwatch.seconds(start - submitted)
                    once.resume(returning: try Cancellation.run(token) { try Parallel.run(threads: chunks) { try body(queued) } })
                } catch {
                    once.resume(throwing: error)
                }
            }
            let timer = deadlines.add(deadline) {
                token.cancel(.deadline)
                once.resume(throwing: GradError.deadlineExceeded)
            }
            once.onResume { [deadlines] in deadlines.cancel(timer) }
        }
    }
}

extension ComputePool {
    /// Runs `body` here, on the caller's thread, with `token` as its cancellation token: for a
    /// ticket from ``admitAlone()``. Its deadline sets the token as in ``run(_:deadline:token:_:)``,
    /// but the caller is answered only when `body` stops (at its next checkpoint). `body` returns
    /// nil when it finds the job too large to finish here (nothing is counted then).
    func runInline<T>(_ ticket: Ticket, deadline: ContinuousClock.Instant, token: Cancellation, _ body: () throws -> T?) throws -> T? {
        ticket.jobSubmitted()
        defer { ticket.jobEnded() }
        if ContinuousClock.now >= deadline { token.cancel(.deadline) }
        let timer = deadlines.add(deadline) { token.cancel(.deadline) }
        defer { deadlines.cancel(timer) }
        let result: T?
        do {
            try token.check()
            result = try Cancellation.run(token) { try body() }
        } catch {
            inlineCounter?.increment()
            throw error
        }
        if result != nil { inlineCounter?.increment() }
        return result
    }
}

/// A request's place in the pool, under its deadline and cancellation token: its computation, and
/// for a streamed answer the later blocks, computed one after the other while the earlier ones are
/// written. ``end()`` gives the place back (once its running job has ended).
final class ComputeSession: Sendable {
    let pool: ComputePool
    let ticket: ComputePool.Ticket
    let token: Cancellation
    let deadline: ContinuousClock.Instant

    init(pool: ComputePool, ticket: ComputePool.Ticket, token: Cancellation, deadline: ContinuousClock.Instant) {
        self.pool = pool
        self.ticket = ticket
        self.token = token
        self.deadline = deadline
    }

    /// Runs `body` on a compute thread, keeping the place.
    func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await pool.run(ticket, deadline: deadline, token: token) { _ in try body() }
    }

    /// The request is done with its place (its answer computed, or streamed, or failed).
    func end() { ticket.abandon() }

    /// A session dropped without ``end()`` (its response never written) gives its place back too.
    deinit { ticket.abandon() }
}

/// A continuation resumed by whichever of several parties comes first; later resumes are ignored.
final class OnceContinuation<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var result: Result<T, any Error>?
        var cleanup: (@Sendable () -> Void)?
    }
    private let state = Mutex(State())

    func set(_ c: CheckedContinuation<T, any Error>) {
        let early = state.withLock { s -> Result<T, any Error>? in
            if let r = s.result { return r }
            s.continuation = c
            return nil
        }
        if let early { c.resume(with: early) }
    }

    func onResume(_ cleanup: @escaping @Sendable () -> Void) {
        let done = state.withLock { s -> Bool in
            if s.result != nil { return true }
            s.cleanup = cleanup
            return false
        }
        if done { cleanup() }
    }

    func resume(returning value: T) { finish(.success(value)) }
    func resume(throwing error: any Error) { finish(.failure(error)) }

    private func finish(_ r: Result<T, any Error>) {
        let (c, cleanup) = state.withLock { s -> (CheckedContinuation<T, any Error>?, (@Sendable () -> Void)?) in
            guard s.result == nil else { return (nil, nil) }
            s.result = r
            let c = s.continuation
            s.continuation = nil
            return (c, s.cleanup)
        }
        c?.resume(with: r)
        cleanup?()
    }
}
