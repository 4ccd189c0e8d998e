import GradCodec
import GradCore
import GradServer
import Hummingbird
import HummingbirdTesting
import Testing

/// `/v1/integrate` and `/v1/logprob` over HTTP, in every output encoding.
@Suite("Routes: flows")
struct FlowRouteTests {
    /// A velocity field v(x, t) = W [x | t] with D = 2.
    static let field = #"{"inputs": ["x", "t"], "layers": [{"op": "linear", "weight": [[0.5, -0.25, 0.1], [0.125, 1.0, -0.3]]}, {"op": "tanh"}]}"#

    @Test("answers in json, base64 and safetensors (solver counts in the metadata)", arguments: ["integrate", "logprob"])
    func encodings(route: String) async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            for encoding in ["json", "base64", "safetensors"] {
                let settings = #""method": "rk4", "step_size": 0.25, "return_intermediates": true, "output_encoding": "\#(encoding)""#
                let request = #"{"model": \#(Self.field), "inputs": {"x": [[0.3, -0.7], [0.1, 0.2]]}, \#(settings)}"#
                try await client.execute(uri: "/v1/\(route)", method: .post, headers: jsonHeaders, body: body(request)) { r in
                    #expect(r.status == .ok, "\(encoding): \(r.text)")
                    if encoding == "safetensors" {
                        let file = try Array(r.body.readableBytesView).withUnsafeBytes { try Safetensors.read($0) }
                        #expect(file.metadata["nfe"] == "16" && file.metadata["method"] == "rk4", "\(file.metadata)")
                        #expect(file.tensors["trajectory"]?.shape == [2, 2, 2])
                    } else {
                        #expect(r.json["nfe"] == .number(16))
                        #expect(r.json["trajectory"] != nil)
                    }
                }
            }
        }
    }

    @Test("solver settings are checked, naming the field")
    func refusals() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        let cases: [(String, String, String)] = [
            ("integrate", #""time_grid": [0]"#, "time_grid"),
            ("integrate", #""method": "heun3""#, "method"),
            ("integrate", #""step_size": 0.1"#, "step_size"),
            ("integrate", #""method": "rk4", "step_size": -0.1"#, "step_size"),
            ("logprob", #""method": "euler", "step_size": -1, "time_grid": [1, 0]"#, "step_size"),
            ("integrate", #""time_grid": []"#, "time_grid"),
            ("integrate", #""method": "euler", "step_size": 0.001, "max_steps": 10"#, "max_steps"),
            ("integrate", #""inputs": {"x": [[0.3, -0.7]], "t": [0]}"#, "inputs.t"),
            ("logprob", #""divergence": "hutchinson", "noise": "uniform""#, "noise"),
            ("logprob", #""seed": 3"#, "seed"),
            ("logprob", #""base": "laplace""#, "base"),
        ]
        try await app.test(.router) { client in
            for (route, extra, field) in cases {
                let inputs = extra.hasPrefix(#""inputs""#) ? "" : #""inputs": {"x": [[0.3, -0.7]]}, "#
                let request = #"{"model": \#(Self.field), \#(inputs)\#(extra)}"#
                try await client.execute(uri: "/v1/\(route)", method: .post, headers: jsonHeaders, body: body(request)) { r in
                    #expect(r.status == .unprocessableContent, "\(route) \(extra): \(r.text)")
                    #expect(r.problemPaths == [field], "\(route) \(extra): \(r.text)")
                }
            }
        }
    }
}
