import Synchronization

/// How long each (registered model, plan) took the last time it was computed, so that a repeat
/// of it may run on its event loop when that was short (``RequestPipeline``'s `inline`).
///
/// The computations are data-independent (dense GEMMs and elementwise loops over shapes the plan
/// fixes), so the same model and plan take the same time again, give or take the machine's
/// noise and the few activations whose libm calls are faster for some inputs (which the static
/// bound, ``ResourcePlan/work``, prices at their slowest). A notebook calling the same model
/// with the same shapes in a loop computes its first call on a compute thread and the others
/// inline. Bounded: it forgets everything when full.
final class InlineHistory: Sendable {
    /// A plan as the pipeline sees it: what decides its time.
    struct Key: Hashable, Sendable {
        let model: String
        let path: String
        let outputs: Int
        let flops: Int
        let work: Int
        let peakBytes: Int
        let inputElements: Int
        let answerBytesPerNumber: Int
    }

    /// Plans remembered at most.
    static let capacity = 4096

    private let seconds = Mutex<[Key: Double]>([:])

    /// Seconds the plan took last time (parse, compute and encode), or nil if it was never computed.
    func lastSeconds(_ key: Key) -> Double? { seconds.withLock { $0[key] } }

    /// Records what the plan just took.
    func record(_ key: Key, seconds s: Double) {
        seconds.withLock { d in
            if d.count >= Self.capacity, d[key] == nil { d.removeAll(keepingCapacity: true) }
            d[key] = s
        }
    }
}
