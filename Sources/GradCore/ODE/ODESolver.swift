import RealModule

/// How an ODE `dy/dt = f(t, y)` is stepped, with torchdiffeq's names and rules.
public enum ODEMethod: String, CaseIterable, Sendable {
    /// Dormand–Prince 5(4), adaptive (`atol`, `rtol`).
    case dopri5
    /// Forward Euler, fixed step.
    case euler
    /// The explicit midpoint rule, fixed step.
    case midpoint
    /// torchdiffeq's `rk4`: the classical fourth-order method in its 3/8-rule form, fixed step.
    case rk4

    /// Whether the step size adapts to the error estimate.
    public var isAdaptive: Bool { self == .dopri5 }

    /// Velocity evaluations per step of a fixed-step method.
    var stages: Int {
        switch self {
        case .euler: 1
        case .midpoint: 2
        case .rk4: 4
        case .dopri5: 6
        }
    }
}

/// How to solve: the method, its step or tolerances, and a bound on the work.
public struct ODEOptions: Sendable, Equatable {
    /// The method.
    public var method: ODEMethod
    /// For fixed-step methods: the step; nil takes one step per interval of the time grid.
    public var stepSize: Double?
    /// Absolute tolerance of an adaptive method.
    public var atol: Double
    /// Relative tolerance of an adaptive method.
    public var rtol: Double
    /// Most steps (accepted or rejected) before the solve gives up.
    public var maxSteps: Int

    /// Creates options; the defaults are torchdiffeq's dopri5 with flow_matching's tolerances.
    public init(method: ODEMethod = .dopri5, stepSize: Double? = nil, atol: Double = 1e-5, rtol: Double = 1e-5, maxSteps: Int = 10_000) {
        self.method = method
        self.stepSize = stepSize
        self.atol = atol
        self.rtol = rtol
        self.maxSteps = maxSteps
    }

    /// Checks the options and the time grid; every problem names its place. Call it before
    /// planning: the plan sizes a fixed-step solve from them.
    public func validate(timeGrid grid: [Double]) throws(GradError) {
        if grid.count < 2 { throw .invalid(.solver(.timeGrid), "needs at least two times, got \(grid.count)") }
        if let i = grid.firstIndex(where: { !$0.isFinite }) { throw .invalid(.solver(.timeGrid), "time \(i) is not finite") }
        let increasing = grid[1] > grid[0]
        for i in 1..<grid.count where increasing ? grid[i] <= grid[i - 1] : grid[i] >= grid[i - 1] {
            throw .invalid(.solver(.timeGrid), "must be strictly increasing or strictly decreasing; times \(i - 1) and \(i) are \(grid[i - 1]) and \(grid[i])")
        }
        if let h = stepSize {
            if method.isAdaptive { throw .invalid(.solver(.stepSize), "only for fixed-step methods (euler, midpoint, rk4); dopri5 adapts its step") }
            if !(h > 0) || !h.isFinite { throw .invalid(.solver(.stepSize), "must be a positive number, got \(h)") }
        }
        if method.isAdaptive {
            if !(atol > 0) || !atol.isFinite { throw .invalid(.solver(.atol), "must be a positive number, got \(atol)") }
            if !(rtol > 0) || !rtol.isFinite { throw .invalid(.solver(.rtol), "must be a positive number, got \(rtol)") }
        }
        if maxSteps < 1 { throw .invalid(.solver(.maxSteps), "must be at least 1, got \(maxSteps)") }
    }

    /// The step times of a fixed-step solve over `grid`, with torchdiffeq's rule: the grid itself
    /// without a step size; with one, `start + k·step` on the increasing time axis (times are
    /// negated for a decreasing grid), the last point replaced by the end. Nil when it would take
    /// more than `maxSteps` steps.
    func fixedSteps(_ grid: [Double]) -> [Double]? {
        guard let steps = fixedStepCount(grid) else { return nil }
        guard let h = stepSize else { return grid }
        let sign: Double = grid[grid.count - 1] < grid[0] ? -1 : 1
        let start = sign * grid[0]
        var times = (0...steps).map { sign * (start + Double($0) * h) }
        times[steps] = grid[grid.count - 1]
        return times
    }

    /// How many steps ``fixedSteps(_:)`` takes, without building them (for the plan); nil when the
    /// grid or the step is not usable or it would take more than `maxSteps`.
    func fixedStepCount(_ grid: [Double]) -> Int? {
        guard grid.count >= 2 else { return nil }
        guard let h = stepSize else { return grid.count - 1 <= maxSteps ? grid.count - 1 : nil }
        guard h > 0, h.isFinite else { return nil }
        // On the increasing time axis; a step longer than the interval is one step of the interval.
        let span = abs(grid[grid.count - 1] - grid[0])
        let points = Swift.max(2, (span / h + 1).rounded(.up))
        guard points.isFinite, points - 1 <= Double(maxSteps) else { return nil }
        return Int(points) - 1
    }
}

/// What a solve did.
public struct ODEStats: Sendable, Equatable {
    /// Evaluations of the right-hand side.
    public var nfe = 0
    /// Steps taken.
    public var accepted = 0
    /// Steps refused by the error control (adaptive methods).
    public var rejected = 0

    /// No work yet.
    public init() {}
}

/// Solves `dy/dt = f(t, y)` for a flat state `y` of `S` along a time grid, the way torchdiffeq's
/// `odeint` does for the methods it shares with this solver.
///
/// The state is a concatenation of parts (`x` `[B·D]`, and for a log-density the `[B]` log
/// determinants); the adaptive error is torchdiffeq's mixed norm, the largest RMS over the parts
/// of `error / (atol + rtol · max(|y₀|, |y₁|))`, so the step controls every part. Fixed-step
/// methods answer grid times between their steps by linear interpolation (torchdiffeq's default);
/// dopri5 shortens the step that would pass a grid time so that it lands on it.
struct ODESolver<S: BLASScalar> {
    let options: ODEOptions
    /// Sizes of the state's parts, for the error norm.
    let parts: [Int]
    /// The right-hand side.
    let f: (Double, [S]) throws(GradError) -> [S]
    private(set) var stats = ODEStats()

    init(options: ODEOptions, parts: [Int], f: @escaping (Double, [S]) throws(GradError) -> [S]) {
        self.options = options
        self.parts = parts
        self.f = f
    }

    /// The states at every time of `grid` (the first is `y0`).
    mutating func solve(_ y0: [S], grid: [Double]) throws(GradError) -> [[S]] {
        try options.validate(timeGrid: grid)
        return options.method.isAdaptive ? try solveAdaptive(y0, grid: grid) : try solveFixed(y0, grid: grid)
    }

    /// `f(t, y)` for a state already known to be finite (the input, an accepted state, a checked stage).
    private mutating func eval(_ t: Double, _ y: [S]) throws(GradError) -> [S] {
        try Cancellation.checkpoint()
        stats.nfe += 1
        return try f(t, y)
    }

    /// `f(t, y)` for a stage state nothing has checked yet: one that left the finite numbers is the
    /// flow's problem at `t`, never reported as bad input by the model.
    private mutating func evalChecked(_ t: Double, _ y: [S]) throws(GradError) -> [S] {
        try Self.checkFinite(y, at: t)
        return try eval(t, y)
    }

    // MARK: fixed step

    private mutating func solveFixed(_ y0: [S], grid: [Double]) throws(GradError) -> [[S]] {
        guard let steps = options.fixedSteps(grid) else {
            throw .limitExceeded(
                place: .solver(.maxSteps), limit: "max_steps",
                message: "the grid from \(grid[0]) to \(grid[grid.count - 1]) takes more than \(options.maxSteps) steps of this size")
        }
        let increasing = grid[grid.count - 1] > grid[0]
        var out = [y0]
        out.reserveCapacity(grid.count)
        var y = y0
        var j = 1
        for i in 0..<(steps.count - 1) {
            let (t0, t1) = (steps[i], steps[i + 1])
            let dy = try step(t0, t1 - t0, t1, y)
            let y1 = Self.axpy(1, dy, y)
            try Self.checkFinite(y1, at: t1)
            stats.accepted += 1
            while j < grid.count, increasing ? t1 >= grid[j] : t1 <= grid[j] {
                out.append(Self.interpolate(t0, t1, y, y1, grid[j]))
                j += 1
            }
            y = y1
        }
        return out
    }

    /// One step's increment, as torchdiffeq's step functions compute it.
    private mutating func step(_ t0: Double, _ dt: Double, _ t1: Double, _ y0: [S]) throws(GradError) -> [S] {
        let h = S(dt)
        switch options.method {
        case .euler:
            return Self.scale(h, try eval(t0, y0))
        case .midpoint:
            let k1 = try eval(t0, y0)
            let half = S(dt / 2)
            return Self.scale(h, try evalChecked(t0 + dt / 2, Self.axpy(half, k1, y0)))
        case .rk4, .dopri5:
            let third = S(1) / 3
            let k1 = try eval(t0, y0)
            let k2 = try evalChecked(t0 + dt / 3, Self.combine(y0, [(h * third, k1)]))
            let k3 = try evalChecked(t0 + dt * 2 / 3, Self.combine(y0, [(h, k2), (-h * third, k1)]))
            let k4 = try evalChecked(t1, Self.combine(y0, [(h, k1), (-h, k2), (h, k3)]))
            var dy = [S](repeating: 0, count: y0.count)
            for i in dy.indices { dy[i] = (k1[i] + 3 * (k2[i] + k3[i]) + k4[i]) * h * S(0.125) }
            return dy
        }
    }

    // MARK: adaptive (Dormand–Prince 5(4))

    private static var alpha: [Double] { [1.0 / 5, 3.0 / 10, 4.0 / 5, 8.0 / 9, 1, 1] }
    private static var beta: [[Double]] {
        [
            [1.0 / 5],
            [3.0 / 40, 9.0 / 40],
            [44.0 / 45, -56.0 / 15, 32.0 / 9],
            [19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729],
            [9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656],
            [35.0 / 384, 0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784, 11.0 / 84],
        ]
    }
    private static var errorWeights: [Double] {
        [
            35.0 / 384 - 1951.0 / 21600, 0, 500.0 / 1113 - 22642.0 / 50085, 125.0 / 192 - 451.0 / 720,
            -2187.0 / 6784 + 12231.0 / 42400, 11.0 / 84 - 649.0 / 6300, -1.0 / 60,
        ]
    }

    private mutating func solveAdaptive(_ y0: [S], grid: [Double]) throws(GradError) -> [[S]] {
        let direction: Double = grid[grid.count - 1] > grid[0] ? 1 : -1
        var t = grid[0]
        var y = y0
        var k1 = try eval(t, y)
        var h = try initialStep(t, y, k1) * direction
        var out = [y0]
        out.reserveCapacity(grid.count)
        for target in grid.dropFirst() {
            while t != target {
                if stats.accepted + stats.rejected >= options.maxSteps {
                    throw .limitExceeded(
                        place: .solver(.maxSteps), limit: "max_steps",
                        message:
                            "the solve took \(options.maxSteps) steps (\(stats.accepted) accepted) and reached t = \(t) of [\(grid[0]), \(grid[grid.count - 1])]; raise max_steps or the tolerances"
                    )
                }
                let lands = abs(h) >= abs(target - t)
                let dt = lands ? target - t : h
                if t + dt == t {
                    throw .invalid(
                        .solver(.atol),
                        "the step size underflowed at t = \(t): the flow diverges or is too stiff there, or the tolerances are too tight for it")
                }
                let hs = S(dt)
                var k = [k1]
                for (i, row) in Self.beta.enumerated() {
                    let yi = Self.combine(y, zip(row, k).map { (hs * S($0.0), $0.1) })
                    // A stage that left the finite numbers: the step was too long; refuse it.
                    guard isFinite(yi) else { break }
                    k.append(try eval(t + dt * Self.alpha[i], yi))
                }
                guard k.count == 7 else {
                    stats.rejected += 1
                    h = Self.nextStep(dt, ratio: .infinity)
                    continue
                }
                // The sixth stage's input is the fifth-order solution (its row is c_sol), and
                // k[6] is f there: first-same-as-last.
                let y1 = Self.combine(y, zip(Self.beta[5], k).map { (hs * S($0.0), $0.1) })
                let error = Self.combine([S](repeating: 0, count: y.count), zip(Self.errorWeights, k).map { (hs * S($0.0), $0.1) })
                let ratio = errorRatio(error, y, y1)
                if ratio <= 1, isFinite(y1) {
                    stats.accepted += 1
                    t = lands ? target : t + dt
                    y = y1
                    k1 = k[6]
                } else {
                    stats.rejected += 1
                }
                h = Self.nextStep(dt, ratio: ratio.isFinite ? ratio : .infinity)
            }
            out.append(y)
        }
        return out
    }

    /// Hairer, Nørsett & Wanner's starting step (torchdiffeq's `_select_initial_step`, which
    /// dopri5 calls with order 4, so the exponent is 1/5).
    private mutating func initialStep(_ t0: Double, _ y0: [S], _ f0: [S]) throws(GradError) -> Double {
        let scale = y0.map { options.atol + Double(abs($0)) * options.rtol }
        let d0 = norm { i in Double(y0[i]) / scale[i] }
        let d1 = norm { i in Double(f0[i]) / scale[i] }
        let h0 = d0 < 1e-5 || d1 < 1e-5 ? 1e-6 : 0.01 * d0 / d1
        let f1 = try evalChecked(t0 + h0, Self.axpy(S(h0), f0, y0))
        let d2 = norm { i in Double(f1[i] - f0[i]) / scale[i] } / h0
        let h1 = d1 <= 1e-15 && d2 <= 1e-15 ? max(1e-6, h0 * 1e-3) : Double.pow(0.01 / max(d1, d2), 1.0 / 5)
        return min(100 * h0, h1)
    }

    /// The mixed norm of `error / (atol + rtol · max(|y0|, |y1|))`.
    private func errorRatio(_ error: [S], _ y0: [S], _ y1: [S]) -> Double {
        norm { i in Double(error[i]) / (options.atol + options.rtol * Double(max(abs(y0[i]), abs(y1[i])))) }
    }

    /// The largest RMS over the state's parts of `value(i)`.
    private func norm(_ value: (Int) -> Double) -> Double {
        var start = 0
        var largest = 0.0
        for size in parts {
            var sum = 0.0
            for i in start..<(start + size) {
                let v = value(i)
                sum += v * v
            }
            largest = max(largest, size == 0 ? 0 : (sum / Double(size)).squareRoot())
            start += size
        }
        return largest.isNaN ? .infinity : largest
    }

    /// torchdiffeq's `_optimal_step_size` (safety 0.9, growth at most 10×, shrink at least to 0.2×).
    private static func nextStep(_ last: Double, ratio: Double) -> Double {
        if ratio == 0 { return last * 10 }
        let shrinkLimit = ratio < 1 ? 1.0 : 0.2
        return last * min(10, max(0.9 / Double.pow(ratio, 1.0 / 5), shrinkLimit))
    }

    private func isFinite(_ y: [S]) -> Bool { FiniteCheck.firstNonFinite(y) == nil }

    // MARK: vector arithmetic

    /// `a·x + y`.
    static func axpy(_ a: S, _ x: [S], _ y: [S]) -> [S] {
        var out = y
        for i in out.indices { out[i] += a * x[i] }
        return out
    }

    /// `a·x`.
    static func scale(_ a: S, _ x: [S]) -> [S] { x.map { a * $0 } }

    /// `y + Σ cᵢ·kᵢ`.
    static func combine(_ y: [S], _ terms: [(S, [S])]) -> [S] {
        var out = y
        out.withUnsafeMutableBufferPointer { o in
            for (c, k) in terms where c != 0 {
                k.withUnsafeBufferPointer { kp in
                    for i in 0..<o.count { o[i] += c * kp[i] }
                }
            }
        }
        return out
    }

    /// torchdiffeq's `_linear_interp`.
    static func interpolate(_ t0: Double, _ t1: Double, _ y0: [S], _ y1: [S], _ t: Double) -> [S] {
        if t == t0 { return y0 }
        if t == t1 { return y1 }
        let slope = S((t - t0) / (t1 - t0))
        var out = y0
        for i in out.indices { out[i] += slope * (y1[i] - y0[i]) }
        return out
    }

    static func checkFinite(_ y: [S], at t: Double) throws(GradError) {
        if FiniteCheck.firstNonFinite(y) != nil {
            throw .invalid(.model(nil), "the solution stopped being finite at t = \(t); the flow diverges on this interval")
        }
    }
}
