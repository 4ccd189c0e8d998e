import Foundation
import GradCodec
import GradCore
import Testing

/// Sampling and log-likelihoods of flows: the ODE methods against closed forms.
///
/// A linear field `v(x) = A x` has the solution `x(t) = e^{tA} x(0)` and a constant divergence
/// `tr A`, so integrating from 1 back to 0 gives `x0 = e^{−A} x1` and `log_det = −tr A`. A
/// fixed-step method applied to it multiplies by a known polynomial of `hA` per step.
@Suite("Flows")
struct FlowTests {
    static let a: [[Double]] = [[0.3, -0.5, 0.1], [0.2, -0.1, 0.4], [-0.3, 0.25, 0.2]]

    /// The model `v(x) = A x` (one bias-free linear layer), float64.
    func linearFlow(_ a: [[Double]] = a) throws -> Model<Double> {
        let rows = a.map { "[" + $0.map { "\($0)" }.joined(separator: ", ") + "]" }.joined(separator: ", ")
        guard case .float64(let m) = try model(#"{"dtype": "float64", "layers": [{"op": "linear", "weight": [\#(rows)]}]}"#) else {
            fatalError()
        }
        return m
    }

    /// `M x` for every row x of `xs` (`[B, n]`).
    func apply(_ m: [[Double]], _ xs: [Double], n: Int) -> [Double] {
        stride(from: 0, to: xs.count, by: n).flatMap { start in (0..<n).map { i in (0..<n).reduce(0.0) { $0 + m[i][$1] * xs[start + $1] } } }
    }

    func matmul(_ p: [[Double]], _ q: [[Double]]) -> [[Double]] {
        p.indices.map { i in q[0].indices.map { j in q.indices.reduce(0.0) { $0 + p[i][$1] * q[$1][j] } } }
    }

    /// `Σ_{k ≤ order} (sA)^k / k!` (order 40 is e^{sA} to machine precision for |sA| < 1).
    func taylor(_ a: [[Double]], _ s: Double, order: Int) -> [[Double]] {
        let n = a.count
        var term = (0..<n).map { i in (0..<n).map { j in i == j ? 1.0 : 0.0 } }
        var sum = term
        for k in 1...order {
            term = matmul(term, a).map { $0.map { $0 * s / Double(k) } }
            sum = zip(sum, term).map { zip($0, $1).map(+) }
        }
        return sum
    }

    @Test("dopri5 follows e^{tA} within its tolerance, at every grid time")
    func dopri5Linear() throws {
        let m = try linearFlow()
        var rng = TestRNG(3)
        let x0: Tensor<Double> = rng.tensor([4, 3])
        let grid = [0, 0.3, 0.7, 1.0]
        let r = try m.integrate(x0, timeGrid: grid, options: ODEOptions(atol: 1e-10, rtol: 1e-10), returnIntermediates: true)
        let trajectory = try #require(r.trajectory)
        #expect(trajectory.shape == [4, 4, 3])
        for (i, t) in grid.enumerated() {
            let want = apply(taylor(Self.a, t, order: 40), x0.scalars, n: 3)
            #expect(relativeError(Array(trajectory.scalars[(i * 12)..<((i + 1) * 12)]), want) < 1e-8, "t = \(t)")
        }
        #expect(r.x.scalars == Array(trajectory.scalars[36...]))
        #expect(r.stats.accepted > 0 && r.stats.nfe >= 6 * r.stats.accepted)
    }

    @Test("the log-likelihood of a linear flow is closed-form: x0 = e^{−A} x1, log_det = −tr A")
    func linearLogProb() throws {
        let m = try linearFlow()
        var rng = TestRNG(5)
        let x1: Tensor<Double> = rng.tensor([5, 3])
        let trA = Self.a[0][0] + Self.a[1][1] + Self.a[2][2]
        for options in [ODEOptions(atol: 1e-11, rtol: 1e-11), ODEOptions(method: .rk4, stepSize: 0.01)] {
            let r = try m.logprob(x1, options: options)
            let x0 = apply(taylor(Self.a, -1, order: 40), x1.scalars, n: 3)
            #expect(relativeError(r.x0.scalars, x0) < 1e-9, "\(options.method)")
            for b in 0..<5 {
                #expect(abs(r.logDet.scalars[b] + trA) < 1e-9)
                let sq = (0..<3).reduce(0.0) { $0 + x0[b * 3 + $1] * x0[b * 3 + $1] }
                #expect(abs(r.logprob.scalars[b] - (-sq / 2 - 1.5 * log(2 * Double.pi) - trA)) < 1e-8)
            }
        }
    }

    @Test(
        "fixed-step methods multiply by their polynomial of hA per step",
        arguments: [(ODEMethod.euler, 1), (.midpoint, 2), (.rk4, 4)])
    func fixedSteps(method: ODEMethod, order: Int) throws {
        let m = try linearFlow()
        var rng = TestRNG(7)
        let x0: Tensor<Double> = rng.tensor([2, 3])
        // step 0.3 over [0, 1]: steps at 0, 0.3, 0.6, 0.9 and a last one of 0.1 (torchdiffeq's grid).
        let r = try m.integrate(x0, timeGrid: [0, 1], options: ODEOptions(method: method, stepSize: 0.3))
        let big = taylor(Self.a, 0.3, order: order)
        let last = taylor(Self.a, 1 - 0.9, order: order)
        var want = x0.scalars
        for _ in 0..<3 { want = apply(big, want, n: 3) }
        want = apply(last, want, n: 3)
        #expect(relativeError(r.x.scalars, want) < 1e-13)
        #expect(r.stats.accepted == 4 && r.stats.nfe == 4 * order && r.stats.rejected == 0)
        // One step per grid interval without a step size; grid times between steps interpolate.
        let plain = try m.integrate(x0, timeGrid: [0, 0.5, 1], options: ODEOptions(method: method), returnIntermediates: true)
        #expect(plain.stats.accepted == 2)
        let mid = try m.integrate(x0, timeGrid: [0, 0.45, 1], options: ODEOptions(method: method, stepSize: 0.3), returnIntermediates: true)
        let at03 = apply(big, x0.scalars, n: 3)
        let at06 = apply(big, at03, n: 3)
        let lerp = zip(at03, at06).map { $0 + 0.5 * ($1 - $0) }
        #expect(relativeError(Array(try #require(mid.trajectory).scalars[6..<12]), lerp) < 1e-13)
    }

    @Test("a decreasing grid integrates backwards; a time-varying model sees the integration time")
    func backwardsAndTime() throws {
        // v(x, t) = t·1 for a 1-D x: x(1) − x(0) = 1/2, exactly for rk4 (a quadratic in t).
        guard case .float64(let m) = try model(#"{"dtype": "float64", "inputs": ["x", "t"], "layers": [{"op": "linear", "weight": [[0, 1]]}]}"#) else {
            fatalError()
        }
        let x = Tensor<Double>(shape: [2, 1], scalars: [1, -2])
        let forward = try m.integrate(x, timeGrid: [0, 1], options: ODEOptions(method: .rk4, stepSize: 0.25))
        #expect(relativeError(forward.x.scalars, [1.5, -1.5]) < 1e-14)
        let back = try m.integrate(forward.x, timeGrid: [1, 0], options: ODEOptions(method: .rk4, stepSize: 0.25))
        #expect(relativeError(back.x.scalars, [1, -2]) < 1e-14)
        let adaptive = try m.integrate(x, timeGrid: [0, 1])
        #expect(relativeError(adaptive.x.scalars, [1.5, -1.5]) < 1e-6)
    }

    @Test("Hutchinson's log-likelihood is reproducible by seed and unbiased")
    func hutchinson() throws {
        // A linear field has a constant Jacobian, so each probe's estimate εᵀAε is constant along
        // the solve and the mean over many probes approaches tr A.
        let m = try linearFlow()
        let x1 = Tensor<Double>(shape: [1, 3], scalars: [0.5, -0.2, 0.1])
        let options = ODEOptions(method: .rk4, stepSize: 0.1)
        let exact = try m.logprob(x1, options: options)
        for noise in ProbeNoise.allCases {
            let once = try m.logprob(x1, options: options, divergence: .hutchinson(probes: 1, seed: 11, noise: noise))
            let again = try m.logprob(x1, options: options, divergence: .hutchinson(probes: 1, seed: 11, noise: noise))
            #expect(once.logprob.scalars == again.logprob.scalars)
            let other = try m.logprob(x1, options: options, divergence: .hutchinson(probes: 1, seed: 12, noise: noise))
            #expect(other.x0.scalars == once.x0.scalars)
            let many = try m.logprob(x1, options: options, divergence: .hutchinson(probes: 20000, seed: 3, noise: noise))
            // Var(εᵀAε) is O(‖A‖²) ≈ 0.5 here; 20 000 probes leave a standard error near 0.005.
            #expect(abs(many.logDet.scalars[0] - exact.logDet.scalars[0]) < 0.03, "\(noise)")
        }
    }

    @Test("bad grids, options and work bounds are refused naming the setting")
    func refusals() throws {
        let m = try linearFlow()
        let x = Tensor<Double>(shape: [1, 3], scalars: [1, 2, 3])
        let cases: [([Double], ODEOptions, SolverSetting)] = [
            ([0], ODEOptions(), .timeGrid),
            ([0, 0.5, 0.5], ODEOptions(), .timeGrid),
            ([0, 1, 0.5], ODEOptions(), .timeGrid),
            ([0, .infinity], ODEOptions(), .timeGrid),
            ([0, 1], ODEOptions(stepSize: 0.1), .stepSize),
            ([0, 1], ODEOptions(method: .euler, stepSize: 0), .stepSize),
            ([0, 1], ODEOptions(method: .rk4, stepSize: -0.1), .stepSize),
            ([], ODEOptions(method: .rk4, stepSize: 0.1), .timeGrid),
            ([0, 1], ODEOptions(atol: 0), .atol),
            ([0, 1], ODEOptions(rtol: -1), .rtol),
            ([0, 1], ODEOptions(maxSteps: 0), .maxSteps),
        ]
        for (grid, options, setting) in cases {
            // The plan runs before the solve validates: it must not trap on what validation refuses.
            _ = m.plan(flow: nil, batch: 1, d: 3, timeGrid: grid, options: options, returnIntermediates: true)
            #expect(throws: GradError.self) { try m.integrate(x, timeGrid: grid, options: options) }
            do {
                _ = try m.integrate(x, timeGrid: grid, options: options)
            } catch .invalid(let issues) {
                #expect(issues.map(\.place) == [.solver(setting)], "\(grid) \(options)")
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
        #expect(throws: GradError.self) { try m.integrate(x, timeGrid: [0, 1], options: ODEOptions(method: .euler, stepSize: 0.001, maxSteps: 10)) }
        do {
            _ = try m.integrate(x, timeGrid: [0, 1], options: ODEOptions(atol: 1e-12, rtol: 1e-12, maxSteps: 5))
            Issue.record("a solve past max_steps returned")
        } catch .limitExceeded(let place, _, let message) {
            #expect(place == .solver(.maxSteps) && message.contains("reached t = "))
        } catch {
            Issue.record("unexpected \(error)")
        }
        // A step longer than the interval is one step of it (torchdiffeq's grid does the same).
        #expect(try m.integrate(x, timeGrid: [0, 1], options: ODEOptions(method: .euler, stepSize: 1e300)).stats.accepted == 1)
        // A flow that blows up is a 422 at the model, never a complaint about the input.
        guard case .float64(let blowUp) = try model(#"{"dtype": "float64", "layers": [{"op": "linear", "weight": [[1e300]]}]}"#) else { fatalError() }
        let one = Tensor<Double>(shape: [1, 1], scalars: [1])
        for options in [ODEOptions(method: .euler), ODEOptions()] {
            do {
                _ = try blowUp.integrate(one, timeGrid: [0, 1e10], options: options)
                Issue.record("a diverging solve returned")
            } catch .invalid(let issues) {
                #expect(issues.allSatisfy { $0.place != .input(.x) }, "\(issues)")
            } catch .limitExceeded {
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
        guard case .float64(let wide) = try model(#"{"dtype": "float64", "layers": [{"op": "linear", "weight": [[1, 2, 3]]}]}"#) else { fatalError() }
        #expect(throws: GradError.invalid(.model(nil), "a velocity field needs as many outputs as x features (D' = D), got D' = 1, D = 3")) {
            try wide.integrate(x, timeGrid: [0, 1])
        }
    }
}
