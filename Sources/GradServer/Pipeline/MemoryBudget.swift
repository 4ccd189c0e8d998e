import Foundation
import GradCore
import Hummingbird
import NIOPosix
import Prometheus
import Synchronization

/// The process memory budget (`--memory-limit`): every request reserves the bytes it will hold —
/// first an estimate from its declared body size, then its plan — before it reads or allocates
/// them. What does not fit is answered 503 with `Retry-After` instead of growing the process into
/// an OOM kill.
public final class MemoryBudget: Sendable {
    /// Bytes the budget may hand out.
    public let limit: Int
    private let reserved = Mutex(0)
    private let gauge: Gauge?

    /// A budget of `limit` bytes; reports its use to `metrics` when given.
    public init(limit: Int, metrics: PrometheusCollectorRegistry? = nil) {
        self.limit = max(1, limit)
        gauge = metrics?.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "gradserve", subsystem: "memory", metricName: "reserved", unitName: "bytes",
                helpText: "Bytes reserved by requests being read or computed"))
        metrics?.makeGauge(
            descriptor: MetricNameDescriptor(
                namespace: "gradserve", subsystem: "memory", metricName: "limit", unitName: "bytes", helpText: "The memory budget (--memory-limit)")
        ).set(Double(self.limit))
    }

    /// Bytes reserved now.
    public var reservedBytes: Int { reserved.withLock { $0 } }

    /// The 503 of a budget without room for `need` more bytes now.
    func busy(need: Count) -> Problem {
        Problem(
            .serviceUnavailable, title: "Server busy",
            detail:
                "requests in flight hold \(Count(reservedBytes).bytesDescription) of the \(Count(limit).bytesDescription) memory budget (--memory-limit); this one needs \(need.bytesDescription); retry shortly",
            headers: [.retryAfter: "1"])
    }

    /// A new, empty reservation.
    public func reservation() -> Reservation { Reservation(budget: self) }

    fileprivate func take(_ bytes: Int) -> Bool {
        let ok = reserved.withLock { r -> Bool in
            guard bytes <= limit - r else { return false }
            r += bytes
            return true
        }
        if ok { gauge?.set(Double(reservedBytes)) }
        return ok
    }

    fileprivate func give(_ bytes: Int) {
        reserved.withLock { $0 -= bytes }
        gauge?.set(Double(reservedBytes))
    }

    /// What one request holds of the budget; given back once by ``release()``.
    public final class Reservation: Sendable {
        private let budget: MemoryBudget
        private let held = Mutex<Int?>(0)  // nil once released

        fileprivate init(budget: MemoryBudget) { self.budget = budget }

        /// Grows the reservation to at least `total` bytes; false when the budget has no room
        /// (the reservation is unchanged then).
        public func grow(to total: Count) -> Bool {
            guard !total.overflowed, total.value <= budget.limit else { return false }
            return held.withLock { h -> Bool in
                guard let current = h else { return false }
                let extra = total.value - current
                if extra <= 0 { return true }
                guard budget.take(extra) else { return false }
                h = total.value
                return true
            }
        }

        /// Gives everything back (idempotent).
        public func release() {
            let bytes = held.withLock { h -> Int in
                let b = h ?? 0
                h = nil
                return b
            }
            if bytes > 0 { budget.give(bytes) }
        }

        deinit { release() }
    }

    /// The default budget: 80 % of the cgroup's memory limit, or of physical memory without one.
    public static func defaultLimit() -> Int {
        let physical = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        var limit = physical
        for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let text = try? String(contentsOfFile: path, encoding: .utf8),
                let v = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), v > 0, v < limit
            {
                limit = v
            }
        }
        return limit / 5 * 4
    }
}

/// Gives freed heap pages back to the kernel once the server has been idle for a moment.
///
/// `MemoryPolicy.keepLargeBlocks` keeps freed blocks so that back-to-back large Jacobians reuse
/// warm pages (17 ms instead of 39 ms for the B = 16 ToyMLP Jacobian); without a trim, the
/// resident size after one large request would never come down. Trimming only when no request
/// has run for `idle` keeps both.
struct HeapTrimmer: Sendable {
    let pool: ComputePool
    let idle: Duration

    func run() async {
        var lastBusy = ContinuousClock.now
        var seen = pool.finishedCount
        var trimmed = true
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            let finished = pool.finishedCount
            if pool.pendingCount > 0 || finished != seen {
                seen = finished
                lastBusy = .now
                trimmed = false
                continue
            }
            if !trimmed, ContinuousClock.now - lastBusy >= idle {
                // On NIO's blocking-I/O threads: trimming walks the heap, and tasks run on the event loops.
                try? await NIOThreadPool.singleton.runIfActive { MemoryPolicy.returnFreePages() }
                trimmed = true
            }
        }
    }
}
