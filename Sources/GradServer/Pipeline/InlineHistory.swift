import Synchronization

/// How long each (registered model, plan) took the last time it was computed, so that a repeat
/// of it may run on its event loop when that was short (``RequestPipeline``'s `inline`).
///
/// The computations are nearly data-independent (dense GEMMs and elementwise loops over shapes
/// the plan fixes), so the same model and plan take about the same time again. Not exactly: libm
/// activations are faster for some inputs, and subnormal numbers slow arithmetic down, so a
/// client can make a plan fast once and slow the next time. Two bounds hold anyway: the static
/// estimate (``ResourcePlan/work``, which prices libm calls at their slowest), and a model whose
/// inline run took more than four times the limit is banned from inline runs for 30 s
/// (``ban(model:for:)``). A notebook calling the same model with the same shapes in a loop computes
/// its first call on a compute thread and the others inline. Bounded: it forgets everything when
/// full (losing only the speed-up).
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
        /// A binary body's length (it tells float32 inputs from float64 ones, whose cast costs); 0 for JSON.
        let binaryBodyBytes: Int
    }

    /// Plans remembered at most.
    static let capacity = 4096

    private struct State {
        var seconds: [Key: Double] = [:]
        var bannedUntil: [String: ContinuousClock.Instant] = [:]
    }
    private let state = Mutex(State())

    /// Seconds the plan took last time (parse, compute and encode), or nil if it was never
    /// computed or its model is banned now.
    func lastSeconds(_ key: Key) -> Double? {
        state.withLock { s in
            if let until = s.bannedUntil[key.model] {
                guard ContinuousClock.now >= until else { return nil }
                s.bannedUntil[key.model] = nil
            }
            return s.seconds[key]
        }
    }

    /// Records what the plan just took.
    func record(_ key: Key, seconds: Double) {
        state.withLock { s in
            if s.seconds.count >= Self.capacity, s.seconds[key] == nil { s.seconds.removeAll(keepingCapacity: true) }
            s.seconds[key] = seconds
        }
    }

    /// No plan of `model` runs inline for `duration`.
    func ban(model: String, for duration: Duration) {
        state.withLock { s in
            if s.bannedUntil.count >= Self.capacity { s.bannedUntil.removeAll(keepingCapacity: true) }
            s.bannedUntil[model] = ContinuousClock.now + duration
        }
    }
}
