import GradCodec
import Testing

@testable import GradCore

@Suite("Limits: checked sizes, plans, cancellation, names")
struct LimitsTests {
    @Test("Count saturates instead of trapping, and a saturated count is above every limit")
    func countSaturates() {
        #expect((Count(1 << 40) * (1 << 40)).overflowed)
        #expect((Count(Int.max) + 1).overflowed)
        #expect(Count(-1).overflowed)
        #expect((Count(4_294_967_296) * 7 * 4_294_967_296 * 0) == .zero)  // zero-size is zero, in any order
        #expect(Count.product([3, 4, 5]).value == 60)
        #expect(Count.overflow > Count(Int.max - 1))
        #expect(Count.describeBytes(Count(3 << 29)) == "1.5 GiB")
    }

    /// linear [H, 1] → linear [1, H]: hidden width H around D = 1.
    func wide(_ h: Int) throws -> Model<Float> {
        let spec = ModelSpec(
            dtype: .float32,
            layers: [
                .linear(weight: ParameterSpec(name: nil, tensor: .float32(Tensor(shape: [h, 1], scalars: [Float](repeating: 0.001, count: h)))), bias: nil),
                .linear(weight: ParameterSpec(name: nil, tensor: .float32(Tensor(shape: [1, h], scalars: [Float](repeating: 0.001, count: h)))), bias: nil),
            ])
        guard case .float32(let m) = try ModelBuilder.build(spec) else { throw GradError.invalid("", "dtype") }
        return m
    }

    @Test("the plan sees hidden widths: forward B·H, and the exact divergence never forms B·H·H")
    func planSeesHiddenWidths() throws {
        let m = try wide(65536)
        let forward = m.plan(.forward, batch: 65536, d: 1)
        #expect(forward.outputElements.value == 65536)
        #expect(forward.peakBytes.value >= 65536 * 65536 * 4)  // the hidden layer's values
        #expect(forward.widest == 65536)
        let div = m.plan(.divergence(.exact), batch: 1, d: 1)
        #expect(!div.divergenceByCyclicTrace)
        #expect(div.peakBytes.value < 64 << 20)
        // And the computation agrees: tr(W₂W₁) = H · 0.001².
        let r = try m.divergence(Inputs(x: Tensor(shape: [1, 1], scalars: [0.5])))
        #expect(abs(Double(r.scalars[0]) - 65536 * 1e-6) < 1e-6)
        // Narrow hidden layers around a wide x keep the cyclic trace.
        let toy = ToyMLP.make(d: 64, width: 16, seed: 1, as: Float.self)
        #expect(toy.plan(.divergence(.exact), batch: 8, d: 64).divergenceByCyclicTrace)
    }

    @Test("plans overflow into saturation, not a trap")
    func planOverflow() throws {
        let m = try wide(65536)
        let p = m.plan(.jacobian(wrt: [.x], mode: .auto), batch: Int.max / 2, d: 1)
        #expect(p.peakBytes.overflowed)
        #expect(p.flops.overflowed)
        #expect(throws: GradError.self) { try m.checkBatchShape(batch: 4_294_967_296, d: 0) }
        #expect(throws: GradError.self) { try m.checkBatchShape(batch: 1, d: 2) }
    }

    @Test("plans bound what the core allocates: output elements match the results")
    func planMatchesResults() throws {
        let m = ToyMLP.make(d: 12, width: 8, seed: 3, as: Double.self)
        let x = Tensor<Double>(shape: [5, 12], scalars: (0..<60).map { Double($0) / 60 })
        let t = Tensor<Double>(shape: [5], scalars: [0.1, 0.2, 0.3, 0.4, 0.5])
        let inputs = Inputs(x: x, t: m.hasT ? t : nil)
        let j = try m.jacobian(inputs, wrt: [.x])
        #expect(m.plan(.jacobian(wrt: [.x], mode: .auto), batch: 5, d: 12).outputElements.value == j.outputs.count + j.x!.count)
        let v = try m.vjp(inputs, gradOutputs: Tensor(shape: [5, 12], scalars: [Double](repeating: 1, count: 60)), wrt: [.x, .params])
        let paramCount = v.params.reduce(0) { $0 + $1.grad.count }
        #expect(
            m.plan(.vjp(k: 1, wrt: [.x, .params], returnOutputs: true), batch: 5, d: 12).outputElements.value == v.outputs!.count + v.x!.count + paramCount)
    }

    @Test("a cancelled computation stops with the reason, on every transform")
    func cancellation() throws {
        let m = ToyMLP.make(d: 16, width: 8, seed: 2, as: Float.self)
        let inputs = Inputs(
            x: Tensor<Float>(shape: [4, 16], scalars: [Float](repeating: 0.5, count: 64)), t: m.hasT ? Tensor(shape: [4], scalars: [0.5, 0.5, 0.5, 0.5]) : nil)
        let late = Cancellation()
        late.cancel(.deadline)
        #expect(throws: GradError.deadlineExceeded) { try Cancellation.run(late) { try m.forward(inputs) } }
        let gone = Cancellation()
        gone.cancel(.clientGone)
        gone.cancel(.deadline)  // the first reason wins
        #expect(throws: GradError.cancelled) { try Cancellation.run(gone) { try m.jacobian(inputs) } }
        #expect(throws: GradError.cancelled) { try Cancellation.run(gone) { try m.divergence(inputs, method: .hutchinson(probes: 4, seed: 1)) } }
        // Row chunks on other threads obey the caller's token (without touching the global thread setting).
        #expect(throws: GradError.cancelled) {
            try Cancellation.run(gone) { () throws(GradError) in
                _ = try Parallel.map([0..<1, 1..<2, 2..<3]) { (_) throws(GradError) in try Cancellation.checkpoint() }
            }
        }
        // Without a token, or with one not cancelled, nothing changes.
        let live = Cancellation()
        #expect(try Cancellation.run(live) { try m.forward(inputs) } == (try m.forward(inputs)))
        #expect(Cancellation.current == nil)
    }

    @Test("one parameter name for two tensors is refused, naming both places")
    func nameCollision() throws {
        let json = #"{"layers": [{"op": "linear", "weight": [[1, 2]]}, {"op": "linear", "weight": "layers.0.weight"}], "weights": {"layers.0.weight": [[3]]}}"#
        let value = try JSONParser.parse(json)
        do throws(GradError) {
            _ = try ModelDecoder.decode(value)
            Issue.record("accepted a name used for two tensors")
        } catch .invalid(let issues) {
            #expect(issues.count == 1)
            #expect(issues[0].place == .field("model.layers[1].weight"))
            #expect(issues[0].message.contains("layers[0].weight"))
        } catch {
            Issue.record("unexpected \(error)")
        }
        // A weights entry shared by two layers (one tensor) stays fine.
        let shared = #"{"layers": [{"op": "linear", "weight": "w"}, {"op": "linear", "weight": "w"}], "weights": {"w": [[1, 0], [0, 1]]}}"#
        #expect(try ModelDecoder.decode(try JSONParser.parse(shared)).parameterCount == 4)
    }

    @Test("a model with more layers than allowed is refused before its layers are decoded")
    func maxLayers() throws {
        let json = #"{"layers": [\#(Array(repeating: #"{"op": "tanh"}"#, count: 5).joined(separator: ","))]}"#
        #expect(
            throws: GradError.limitExceeded(
                place: .field("model.layers"), limit: "--max-layers", message: "the model has 5 layers; this server accepts at most 4")
        ) {
            try ModelDecoder.decode(try JSONParser.parse(json), maxLayers: 4)
        }
        #expect(try ModelDecoder.decode(try JSONParser.parse(json), maxLayers: 5).parameterCount == 0)
    }
}
