import GradCore
import Hummingbird
import NIOPosix
import Prometheus
import Synchronization

/// A bounded pool of compute threads. Compute never runs on the event loops or on Swift's
/// cooperative pool, so health checks answer while a long Jacobian runs.
///
/// At most `workers` jobs run at once and at most `maxQueued` wait; past that, `submit` refuses
/// with 503 and `Retry-After`. A job still queued at its deadline is dropped; a job running past
/// its deadline is answered with 504 (its result is discarded when it finishes).
public final class ComputePool: Sendable {
    private let threads: NIOThreadPool
    private let workers: Int
    private let maxQueued: Int
    private let pending = Mutex(0)
    private let inFlightGauge: Gauge?

    /// Starts `workers` threads.
    public init(workers: Int, maxQueued: Int, metrics: PrometheusCollectorRegistry? = nil) {
        self.workers = max(1, workers)
        self.maxQueued = max(0, maxQueued)
        threads = NIOThreadPool(numberOfThreads: self.workers)
        threads.start()
        inFlightGauge = metrics?.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "gradserve", subsystem: "compute", metricName: "pending", unitName: "", helpText: "Compute jobs running or queued"))
    }

    /// Jobs running or waiting now.
    public var pendingCount: Int { pending.withLock { $0 } }

    /// Stops the threads after the jobs already submitted.
    public func shutdown() async throws { try await threads.shutdownGracefully() }

    /// Runs `body` on a compute thread, passing it the seconds it waited for the thread.
    public func run<T: Sendable>(
        deadline: ContinuousClock.Instant, _ body: @escaping @Sendable (_ queueSeconds: Double) throws -> T
    ) async throws -> T {
        let admitted = pending.withLock { n -> Bool in
            guard n < workers + maxQueued else { return false }
            n += 1
            return true
        }
        guard admitted else {
            var headers = HTTPFields()
            headers[.retryAfter] = "1"
            throw Problem(
                .serviceUnavailable, title: "Server busy",
                detail: "\(workers) computations are running and \(maxQueued) are queued; retry shortly", headers: headers)
        }
        inFlightGauge?.set(Double(pendingCount))
        defer {
            pending.withLock { $0 -= 1 }
            inFlightGauge?.set(Double(pendingCount))
        }
        let submitted = ContinuousClock.now
        let once = OnceContinuation<T>()
        return try await withCheckedThrowingContinuation { continuation in
            once.set(continuation)
            threads.submit { state in
                guard state == .active else {
                    return once.resume(throwing: Problem(.serviceUnavailable, title: "Shutting down", detail: "the server is stopping"))
                }
                let start = ContinuousClock.now
                if start >= deadline { return once.resume(throwing: GradError.deadlineExceeded) }
                let queued = Stopwatch.seconds(start - submitted)
                do { once.resume(returning: try body(queued)) } catch { once.resume(throwing: error) }
            }
            let timer = Task {
                try? await Task.sleep(until: deadline, clock: .continuous)
                if !Task.isCancelled { once.resume(throwing: GradError.deadlineExceeded) }
            }
            once.onResume { timer.cancel() }
        }
    }
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
