import GradCodec
import GradCore
import Testing

/// Bad models and inputs produce typed errors naming the field, never a crash.
@Suite("Model validation")
struct ModelValidationTests {
    static let bad: [(json: String, path: String)] = [
        (#"{"layers": []}"#, "model.layers"),
        (#"{"inputs": ["x"]}"#, "model.layers"),
        (#"{"layers": [{"op": "conv2d"}]}"#, "model.layers[0].op"),
        (#"{"layers": [{"op": "relu", "inplace": true}]}"#, "model.layers[0].inplace"),
        (#"{"layers": [{"op": "linear", "weight": [[1, 2], [3]]}]}"#, "model.layers[0].weight[1]"),
        (#"{"layers": [{"op": "linear", "weight": [[1, 2]], "bias": [1, 2]}]}"#, "model.layers[0].bias"),
        (#"{"layers": [{"op": "linear", "weight": [[1e999, 2]]}]}"#, "model.layers[0].weight"),
        (#"{"layers": [{"op": "linear", "weight": [1, 2]}]}"#, "model.layers[0].weight"),
        (#"{"layers": [{"op": "linear", "weight": [[1, 2]]}, {"op": "relu"}, {"op": "linear", "weight": [[1, 2]]}]}"#, "model.layers[2].weight"),
        (#"{"layers": [{"op": "linear", "weight": "missing"}]}"#, "model.layers[0].weight"),
        (#"{"layers": [{"op": "linear", "weight": "w"}], "weights": {"w": [[1]], "extra": [1]}}"#, "model.weights.extra"),
        (
            #"{"layers": [{"op": "linear", "weight": {"shape": [100000, 100000], "dtype": "float32", "encoding": "base64", "data": ""}}]}"#,
            "model.layers[0].weight.shape"
        ),
        (#"{"layers": [{"op": "linear", "weight": {"shape": [9223372036854775807, 4], "data": [1]}}]}"#, "model.layers[0].weight.shape[0]"),
        (
            #"{"layers": [{"op": "linear", "weight": {"shape": [2, 2], "dtype": "float32", "encoding": "base64", "data": "AAAA"}}]}"#,
            "model.layers[0].weight.data"
        ),
        (
            #"{"layers": [{"op": "linear", "weight": {"shape": [1, 1], "dtype": "float32", "encoding": "base64", "data": "AADAfw=="}}]}"#,
            "model.layers[0].weight.data"
        ),
        (#"{"layers": [{"op": "linear", "weight": {"shape": [-1, 2], "data": [1]}}]}"#, "model.layers[0].weight.shape[0]"),
        (#"{"layers": [{"op": "relu"}], "dtype": "float16"}"#, "model.dtype"),
        (#"{"layers": [{"op": "relu"}], "inputs": ["x", "y"]}"#, "model.inputs"),
        (#"{"layers": [{"op": "linear", "weight": [[1]]}], "inputs": ["x", "t"]}"#, "model.layers[0].weight"),
        (#"{"layers": [{"op": "gelu", "approximate": "fast"}]}"#, "model.layers[0].approximate"),
        (#"{"layers": [{"op": "softplus", "beta": 0}]}"#, "model.layers[0].beta"),
        (#"{"layers": [{"op": "elu", "alpha": "big"}]}"#, "model.layers[0].alpha"),
        (#"{"layers": [{"op": "leaky_relu", "negative_slope": [1]}]}"#, "model.layers[0].negative_slope"),
        (#"{"layers": [{"op": "gelu", "approximate": 1}]}"#, "model.layers[0].approximate"),
        (#"{"layers": {"op": "relu"}}"#, "model.layers"),
        (#"[1, 2]"#, "model"),
        (#"{"layers": [{"op": "relu"}], "name": "m"}"#, "model.name"),
    ]

    @Test("refused with the field's path", arguments: bad)
    func refused(json text: String, path: String) throws {
        do {
            _ = try model(text)
            Issue.record("accepted a bad model: \(text)")
        } catch let GradError.invalid(issues) {
            #expect(issues.contains { $0.place == .field(path) }, "expected an issue at \(path), got \(issues)")
        }
    }

    @Test("the chain error says what was expected")
    func chainMessage() throws {
        let text = #"{"inputs": ["x", "t"], "layers": [{"op": "linear", "weight": {"shape": [64, 785], "data": "x"}}]}"#
        #expect(throws: GradError.self) { try model(text) }
        do {
            _ = try model(#"{"layers": [{"op": "linear", "weight": [[1, 2, 3]]}, {"op": "selu"}, {"op": "linear", "weight": [[1, 2]]}]}"#)
        } catch let GradError.invalid(issues) {
            #expect(issues.first?.description == "model.layers[2].weight: expected [1, 1] (1 input features from layers[0] (out = 1)), got [1, 2]")
        }
    }

    @Test("inputs are checked against the model")
    func inputs() throws {
        guard case .float64(let m) = try model(#"{"dtype": "float64", "inputs": ["x", "t"], "layers": [{"op": "linear", "weight": [[1, 2, 3]]}]}"#) else {
            fatalError()
        }
        #expect(throws: GradError.invalid(.input(.x), "expected [1, 2] (D = 2 features), got [1, 3]")) {
            try m.forward(Inputs(x: Tensor(zeros: [1, 3]), t: Tensor(zeros: [1])))
        }
        #expect(throws: GradError.invalid(.input(.t), "required: the model's inputs are [\"x\", \"t\"]")) {
            try m.forward(Inputs(x: Tensor(zeros: [1, 2])))
        }
        #expect(throws: GradError.self) { try m.vjp(Inputs(x: Tensor(zeros: [2, 2]), t: Tensor(zeros: [2])), gradOutputs: Tensor(zeros: [2, 2])) }
        #expect(throws: GradError.self) {
            try m.jvp(Inputs(x: Tensor(zeros: [2, 2]), t: Tensor(zeros: [2])), tangentX: Tensor(zeros: [3, 2, 2]), tangentT: Tensor(zeros: [2]))
        }
        guard case .float64(let noT) = try model(#"{"dtype": "float64", "layers": [{"op": "relu"}]}"#) else { fatalError() }
        #expect(throws: GradError.self) { try noT.vjp(Inputs(x: Tensor(zeros: [1, 2])), gradOutputs: Tensor(zeros: [1, 2]), wrt: [.t]) }
        #expect(throws: GradError.self) { try noT.jacobian(Inputs(x: Tensor(zeros: [1, 2])), wrt: [.t]) }
    }

    @Test("shared named weights accumulate their gradient, as in torch")
    func sharedWeights() throws {
        let text = #"{"dtype": "float64", "layers": [{"op": "linear", "weight": "w"}, {"op": "linear", "weight": "w"}], "weights": {"w": [[2]]}}"#
        guard case .float64(let m) = try model(text) else { fatalError() }
        // y = w·w·x, dy/dw = 2wx = 12 at w = 2, x = 3.
        let r = try m.vjp(Inputs(x: Tensor(shape: [1, 1], scalars: [3])), gradOutputs: Tensor(shape: [1, 1], scalars: [1]), wrt: [.params])
        #expect(r.params.count == 1)
        #expect(r.params.first?.grad.scalars == [12])
    }
}
