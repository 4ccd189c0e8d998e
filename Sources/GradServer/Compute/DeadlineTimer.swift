import Foundation
import Synchronization

/// Request deadlines on one thread of their own: each computation registers its deadline and
/// cancels it when it ends; the thread runs the actions of the deadlines that pass.
///
/// Why not a `Task` sleeping until each deadline (what the pool did before): that costs every
/// request a task, a timer and two wake-ups of Swift's cooperative threads (one to start the
/// sleep, one to end it when the computation finishes first) — measured here as part of the
/// ~0.5 ms an HTTP forward spent outside its reported phases. Here, registering a deadline wakes
/// the thread only when it is earlier than the one the thread sleeps towards (with the fixed
/// `--deadline`, about once per deadline period), and cancelling never does: the thread wakes at
/// a stale time now and then and finds nothing to do.
final class DeadlineTimer: Sendable {
    private struct State {
        var entries: [Int: (at: ContinuousClock.Instant, action: @Sendable () -> Void)] = [:]
        var nextID = 0
        /// The instant the thread sleeps towards; nil while it waits for a first entry.
        var sleepingUntil: ContinuousClock.Instant?
        var stopped = false
    }

    private let state = Mutex(State())
    private let wake = NSCondition()

    init() {
        let thread = Thread { [self] in loop() }
        thread.name = "gradserve-deadlines"
        thread.start()
    }

    /// Runs `action` on the timer's thread once `deadline` has passed, unless cancelled first.
    func add(_ deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> Int {
        let (id, signal) = state.withLock { s -> (Int, Bool) in
            s.nextID += 1
            s.entries[s.nextID] = (deadline, action)
            return (s.nextID, s.sleepingUntil.map { deadline < $0 } ?? true)
        }
        if signal {
            wake.lock()
            wake.signal()
            wake.unlock()
        }
        return id
    }

    /// Forgets deadline `id` (its action will not run); does not wake the thread.
    func cancel(_ id: Int) { _ = state.withLock { $0.entries.removeValue(forKey: id) } }

    /// Ends the thread (pending actions do not run).
    func stop() {
        state.withLock { $0.stopped = true }
        wake.lock()
        wake.signal()
        wake.unlock()
    }

    private func loop() {
        wake.lock()
        defer { wake.unlock() }
        while true {
            let now = ContinuousClock.now
            // Due actions are taken out under the lock and run outside it.
            let (stopped, due, next) = state.withLock { s -> (Bool, [@Sendable () -> Void], ContinuousClock.Instant?) in
                if s.stopped { return (true, [], nil) }
                let dueIDs = s.entries.filter { $0.value.at <= now }.map(\.key)
                let due = dueIDs.compactMap { s.entries.removeValue(forKey: $0)?.action }
                s.sleepingUntil = due.isEmpty ? s.entries.values.map(\.at).min() : now
                return (false, due, s.sleepingUntil)
            }
            if stopped { return }
            if !due.isEmpty {
                wake.unlock()
                for action in due { action() }
                wake.lock()
                continue
            }
            if let next {
                let seconds = Double((next - now).components.seconds) + Double((next - now).components.attoseconds) * 1e-18
                _ = wake.wait(until: Date(timeIntervalSinceNow: max(0, seconds)))
            } else {
                wake.wait()
            }
        }
    }
}
