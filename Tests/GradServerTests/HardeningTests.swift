import Foundation
import GradCodec
import GradCore
import GradServer
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

/// Requests that used to crash or exhaust the server: each is refused with a 4xx in its route's
/// error shape before anything large is allocated, and the server keeps serving.
@Suite("Hardening")
struct HardeningTests {
    func register(_ client: some TestClientProtocol) async throws -> String {
        try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel)}"#)) { r in
            r.json["id"]?.string ?? ""
        }
    }

    func zeroSize(_ shape: String) -> String {
        #"{"object_type": "array", "shape": \#(shape), "dtype": "float32", "data": {"buffer": "", "encoding": "base64"}}"#
    }

    @Test("zero-size and 2⁶²-extent arrays on every adapter route are 4xx, not a trap")
    func adapterExtents() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            let id = try await register(client)
            for shape in ["[4294967296, 0]", "[9223372036854774784, 0]", "[0, 9223372036854774784]", "[4611686018427387904, 4]"] {
                let x = zeroSize(shape)
                let t = zeroSize("[4294967296]")
                for (route, extra) in [
                    ("apply", ""), ("jacobian", #", "jac_inputs": ["x", "t"], "jac_outputs": ["y"]"#),
                    ("vector_jacobian_product", #", "vjp_inputs": ["x"], "vjp_outputs": ["y"], "cotangent_vector": {"y": \#(x)}"#),
                    ("jacobian_vector_product", #", "jvp_inputs": ["x"], "jvp_outputs": ["y"], "tangent_vector": {"x": \#(x)}"#),
                ] {
                    try await client.execute(
                        uri: "/tesseract/\(id)/\(route)", method: .post, headers: jsonHeaders, body: body(#"{"inputs": {"x": \#(x), "t": \#(t)}\#(extra)}"#)
                    ) { r in
                        #expect(r.status == .unprocessableContent, "\(route) \(shape): \(r.text)")
                        #expect(r.json["detail"] != nil, "Tesseract's error shape")
                    }
                }
            }
            for config in [#"{"batch": 1048576, "d": 1048576}"#, #"{"batch": 0}"#] {
                try await client.execute(
                    uri: "/umbridge/\(id)/Evaluate", method: .post, headers: jsonHeaders, body: body(#"{"input": [[0.1, 0.2], [0.5]], "config": \#(config)}"#)
                ) { r in
                    #expect(r.status == .badRequest, "\(r.text)")
                    #expect(r.json["error"]?["type"]?.string == "InvalidInput")
                }
            }
            try await client.execute(uri: "/healthz", method: .get) { r in #expect(r.status == .ok) }
        }
    }

    @Test("a parameter name used for two tensors is refused everywhere, naming both places")
    func nameCollision() async throws {
        let model = #"{"layers": [{"op": "linear", "weight": [[1, 2]]}, {"op": "linear", "weight": "layers.0.weight"}], "weights": {"layers.0.weight": [[3]]}}"#
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            for (uri, request) in [
                ("/v1/vjp", #"{"model": \#(model), "inputs": {"x": [[1, 2]]}, "grad_outputs": [[1]], "wrt": ["params"]}"#),
                ("/v1/forward", #"{"model": \#(model), "inputs": {"x": [[1, 2]]}}"#),
                ("/v1/models", #"{"model": \#(model)}"#),
            ] {
                try await client.execute(uri: uri, method: .post, headers: jsonHeaders, body: body(request)) { r in
                    #expect(r.status == .unprocessableContent, "\(uri): \(r.text)")
                    #expect(r.problemPaths == ["model.layers[1].weight"])
                    #expect(r.text.contains("layers[0].weight"))
                }
            }
        }
    }

    /// `linear [H, 1] → linear [1, H]` as a model-format object.
    func wideModel(_ h: Int) -> String {
        let column = Data(repeating: 0, count: h * 4).base64EncodedString()
        return
            #"{"layers": [{"op": "linear", "weight": {"shape": [\#(h), 1], "dtype": "float32", "encoding": "base64", "data": "\#(column)"}}, {"op": "linear", "weight": {"shape": [1, \#(h)], "dtype": "float32", "encoding": "base64", "data": "\#(column)"}}]}"#
    }

    @Test("hidden widths count: B·H above the per-request memory is a 422 naming the limit; the divergence avoids B·H·H")
    func hiddenWidths() async throws {
        let app = try await buildApplication(testConfiguration { $0.maxRequestMemory = 256 << 20 }, logger: quietLogger())
        try await app.test(.router) { client in
            let model = wideModel(65536)
            let x = #"{"shape": [4096, 1], "dtype": "float32", "encoding": "base64", "data": "\#(Data(repeating: 0, count: 4096 * 4).base64EncodedString())"}"#
            for (uri, extra) in [
                ("/v1/forward", ""), ("/v1/jacobian", ""), ("/v1/vjp", #", "grad_outputs": \#(x), "wrt": ["x", "params"]"#),
                ("/v1/jvp", #", "tangents": {"x": \#(x)}"#), ("/v1/divergence", #", "method": "hutchinson", "probes": 4"#),
            ] {
                try await client.execute(uri: uri, method: .post, headers: jsonHeaders, body: body(#"{"model": \#(model), "inputs": {"x": \#(x)}\#(extra)}"#)) {
                    r in
                    #expect(r.status == .unprocessableContent, "\(uri): \(r.text)")
                    #expect(r.text.contains("--max-request-memory"), "\(uri): \(r.text)")
                }
            }
            try await client.execute(
                uri: "/v1/divergence", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(model), "inputs": {"x": [[0.5]]}}"#)
            ) { r in
                #expect(r.status == .ok, "\(r.text)")
                #expect(r.json["divergence"]?.numbers == [0])
            }
        }
    }

    @Test("long chains: --max-layers, and FLOPs above --max-request-gflop, are 422 before computing")
    func longChains() async throws {
        let app = try await buildApplication(
            testConfiguration {
                $0.maxLayers = 100
                $0.maxRequestGFLOP = 1
            }, logger: quietLogger())
        try await app.test(.router) { client in
            let w =
                #"{"shape": [512, 512], "dtype": "float32", "encoding": "base64", "data": "\#(Data(repeating: 0, count: 512 * 512 * 4).base64EncodedString())"}"#
            let chain = { (n: Int) in
                #"{"layers": [\#(Array(repeating: #"{"op": "linear", "weight": "w"}"#, count: n).joined(separator: ","))], "weights": {"w": \#(w)}}"#
            }
            try await client.execute(
                uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(chain(20000)), "inputs": {"x": \#(zeros(1, 512))}}"#)
            ) { r in
                #expect(r.status == .unprocessableContent)
                #expect(r.text.contains("--max-layers"))
            }
            try await client.execute(
                uri: "/v1/jacobian", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(chain(100)), "inputs": {"x": \#(zeros(8, 512))}}"#)
            ) { r in
                #expect(r.status == .unprocessableContent)
                #expect(r.text.contains("--max-request-gflop"))
            }
        }
    }

    @Test("a foreign Origin gets 403; no Origin, or an allowed one, is served")
    func origins() async throws {
        let forward = #"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#
        let keyless = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await keyless.test(.router) { client in
            try await client.execute(
                uri: "/v1/forward", method: .post, headers: [.contentType: "application/x-www-form-urlencoded", .origin: "https://evil.example"],
                body: body(forward)
            ) { r in
                #expect(r.status == .forbidden)
                #expect(r.headers[.contentType] == "application/problem+json")
            }
            try await client.execute(uri: "/v1/forward", method: .post, headers: [.contentType: "application/x-www-form-urlencoded"], body: body(forward)) {
                r in #expect(r.status == .ok)
            }
        }
        let open = try await buildApplication(
            testConfiguration {
                $0.allowedOrigins = ["https://notebook.example"]
                $0.allowedHosts = ["localhost"]
            }, logger: quietLogger())
        try await open.test(.router) { client in
            try await client.execute(
                uri: "/v1/forward", method: .post, headers: [.contentType: "application/json", .origin: "https://notebook.example"],
                body: body(forward)
            ) { r in
                #expect(r.status == .ok)
                #expect(r.headers[.accessControlAllowOrigin] == "https://notebook.example")
            }
        }
        // A DNS-rebinding name (the test client always says Host: localhost).
        let strict = try await buildApplication(testConfiguration { $0.allowedHosts = ["gradserve.internal"] }, logger: quietLogger())
        try await strict.test(.router) { client in
            try await client.execute(uri: "/v1/info", method: .get) { r in #expect(r.status == .forbidden) }
            // Probes stay open: orchestrators address them by IP.
            try await client.execute(uri: "/healthz", method: .get) { r in #expect(r.status == .ok) }
        }
    }

    @Test("registry quotas answer 507 and keep what was acknowledged")
    func registryQuota() async throws {
        let app = try await buildApplication(testConfiguration { $0.maxModels = 1 }, logger: quietLogger())
        try await app.test(.router) { client in
            let id = try await register(client)
            let other = #"{"model": {"layers": [{"op": "linear", "weight": [[1.5]]}]}}"#
            try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(other)) { r in
                #expect(r.status.code == 507, "\(r.text)")
                #expect(r.text.contains("--max-models"))
            }
            try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel)}"#)) { r in
                #expect(r.status == .ok, "the same model again is not new")
            }
            try await client.execute(uri: "/v1/models/\(id)", method: .delete) { r in #expect(r.status == .noContent) }
            try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(other)) { r in #expect(r.status == .created) }
        }
    }
    @Test("a t of the wrong length is refused before a streamed Jacobian slices it")
    func streamedJacobianShortT() async throws {
        // Large enough to stream (the answer above two 4 MiB blocks), with t of one element for 600 000 samples.
        let b = 600_000
        let x = AnyTensor(Tensor<Float>(shape: [b, 2], scalars: [Float](repeating: 0.25, count: b * 2)))
        let t = AnyTensor(Tensor<Float>(shape: [1], scalars: [0.5]))
        let request = #"{"model": \#(tinyModel), "output_encoding": "safetensors"}"#
        let file = Safetensors.write([("inputs.x", x), ("inputs.t", t)], metadata: [("request", request)])
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            for op in ["jacobian", "forward", "vjp"] {
                try await client.execute(
                    uri: "/v1/\(op)", method: .post, headers: [.contentType: "application/octet-stream"], body: ByteBuffer(bytes: file)
                ) { r in
                    #expect(r.status == .unprocessableContent, "\(op): \(r.text.prefix(300))")
                    #expect(r.problemPaths.contains("inputs.t"), "\(op): \(r.text.prefix(300))")
                }
            }
        }
    }
}
