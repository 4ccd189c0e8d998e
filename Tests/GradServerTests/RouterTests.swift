import Foundation
import GradCodec
import GradCore
import GradServer
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

@Suite("Routes")
struct RouterTests {
    @Test func healthAndInfo() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            try await client.execute(uri: "/healthz", method: .get) { r in
                #expect(r.status == .ok)
                #expect(r.json["status"]?.string == "ok")
            }
            try await client.execute(uri: "/readyz", method: .get) { r in #expect(r.status == .ok) }
            try await client.execute(uri: "/v1/info", method: .get) { r in
                #expect(r.status == .ok)
                #expect(r.json["blas"]?["library"]?.string == "OpenBLAS")
                #expect(r.json["limits"]?["max_output_elements"]?.numbers == [Double(1 << 24)])
            }
            try await client.execute(uri: "/openapi.yaml", method: .get) { r in
                #expect(r.status == .ok)
                #expect(r.text.hasPrefix("openapi: 3"))
            }
            try await client.execute(
                uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#)
            ) { r in
                #expect(r.status == .ok)
            }
            try await client.execute(uri: "/metrics", method: .get) { r in
                #expect(r.status == .ok)
                #expect(r.text.contains("gradserve_http_requests_total"))
                #expect(r.text.contains(#"route="/v1/forward""#))
            }
        }
    }

    /// Values checked against the closed form: y = selu(W [x | t] + b), by hand in the test.
    @Test func operationsAnswer() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        func selu(_ z: Double) -> (Double, Double) {
            let (s, a) = (1.0507009873554804934193349852946, 1.6732632423543772848170429916717)
            return z > 0 ? (s * z, s) : (s * a * (exp(z) - 1), s * a * exp(z))
        }
        let w = [[1.0, 2, 3], [4, 5, 6]]
        let b = [0.5, -0.5]
        let x = [[0.1, 0.2], [0.3, -0.4]]
        let t = [0.5, 1.0]
        func pre(_ k: Int) -> Double {
            let (s, i) = (k / 2, k % 2)
            let lin: Double = w[i][0] * x[s][0] + w[i][1] * x[s][1]
            return lin + w[i][2] * t[s] + b[i]
        }
        let z = (0..<4).map(pre)
        let y = z.map { selu($0).0 }
        let dy = z.map { selu($0).1 }
        try await app.test(.router) { client in
            let base = #""model": \#(tinyModel.replacingOccurrences(of: #""inputs""#, with: #""dtype": "float64", "inputs""#)), "inputs": \#(tinyInputs)"#
            try await client.execute(uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body("{\(base)}")) { r in
                #expect(r.status == .ok)
                let out = try #require(r.json["outputs"]?.numbers)
                for (a, e) in zip(out, y) { #expect(abs(a - e) < 1e-12) }
                #expect(r.headers[HTTPField.Name("Server-Timing")!]?.contains("compute;dur=") == true)
                for k in ["queue_ms", "decode_ms", "compute_ms", "encode_ms"] { #expect(r.json["timing"]?[k]?.numbers != nil) }
            }
            // VJP with v = e_0 per sample: grads.x[s] = dy[s,0] * W[0, :2], grads.t[s] = dy[s,0] * W[0, 2].
            try await client.execute(
                uri: "/v1/vjp", method: .post, headers: jsonHeaders, body: body(#"{\#(base), "grad_outputs": [[1, 0], [1, 0]], "wrt": ["x", "t", "params"]}"#)
            ) { r in
                #expect(r.status == .ok)
                let gx = try #require(r.json["grads"]?["x"]?.numbers)
                let gt = try #require(r.json["grads"]?["t"]?.numbers)
                #expect(abs(gx[0] - dy[0] * 1) < 1e-12 && abs(gx[1] - dy[0] * 2) < 1e-12 && abs(gx[3] - dy[2] * 2) < 1e-12)
                #expect(abs(gt[1] - dy[2] * 3) < 1e-12)
                #expect(r.json["grads"]?["params"]?["layers.0.bias"]?.numbers?.count == 2)
            }
            try await client.execute(
                uri: "/v1/jvp", method: .post, headers: jsonHeaders, body: body(#"{\#(base), "tangents": {"t": [1, 0]}, "return_outputs": false}"#)
            ) { r in
                #expect(r.status == .ok)
                #expect(r.json["outputs"] == nil)
                let j = try #require(r.json["jvp"]?.numbers)
                #expect(abs(j[0] - dy[0] * 3) < 1e-12 && abs(j[1] - dy[1] * 6) < 1e-12 && j[2] == 0 && j[3] == 0)
            }
            for mode in ["reverse", "forward", "auto"] {
                try await client.execute(
                    uri: "/v1/jacobian", method: .post, headers: jsonHeaders, body: body(#"{\#(base), "wrt": ["x", "t"], "mode": "\#(mode)"}"#)
                ) { r in
                    #expect(r.status == .ok)
                    let jx = try #require(r.json["jacobian"]?["x"]?.numbers)
                    #expect(jx.count == 8)
                    #expect(abs(jx[1] - dy[0] * 2) < 1e-12 && abs(jx[2] - dy[1] * 4) < 1e-12)
                    if mode != "auto" { #expect(r.json["mode"]?.string == mode) }
                }
            }
            try await client.execute(uri: "/v1/divergence", method: .post, headers: jsonHeaders, body: body("{\(base)}")) { r in
                #expect(r.status == .ok)
                let d = try #require(r.json["divergence"]?.numbers)
                #expect(abs(d[0] - (dy[0] * 1 + dy[1] * 5)) < 1e-12)
            }
            try await client.execute(uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{\#(base), "output_encoding": "base64"}"#)) { r in
                #expect(r.json["outputs"]?["encoding"]?.string == "base64")
            }
        }
    }

    static let errorCases: [(path: String, body: String, status: Int, field: String?)] = [
        ("/v1/forward", "{", 400, nil),
        ("/v1/forward", #"{"model": \#(tinyModel), "inputs": {"x": [[NaN, 1]], "t": [0]}}"#, 400, nil),
        ("/v1/forward", #"{"model": \#(tinyModel), "inputs": {"x": [[1e999, 1]], "t": [0]}}"#, 422, "inputs.x"),
        ("/v1/forward", #"{"model": \#(tinyModel), "inputs": {"x": [[1, 2], [3]], "t": [0, 1]}}"#, 422, "inputs.x[1]"),
        ("/v1/forward", #"{"model": \#(tinyModel), "inputs": {"x": [[1, 2, 3]], "t": [0]}}"#, 422, "inputs.x"),
        ("/v1/forward", #"{"model": \#(tinyModel), "inputs": {"x": [[1, 2]]}}"#, 422, "inputs.t"),
        ("/v1/forward", #"{"model": \#(tinyModel), "inputs": {"x": []}}"#, 422, "inputs.x"),
        ("/v1/forward", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "extra": 1}"#, 422, "extra"),
        ("/v1/forward", #"{"inputs": \#(tinyInputs)}"#, 422, "model"),
        ("/v1/forward", #"{"model": {"layers": [{"op": "conv"}]}, "inputs": \#(tinyInputs)}"#, 422, "model.layers[0].op"),
        ("/v1/forward", #"{"model": "0000", "inputs": \#(tinyInputs)}"#, 404, "model"),
        ("/v1/vjp", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#, 422, "grad_outputs"),
        ("/v1/vjp", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "grad_outputs": [[1, 2]]}"#, 422, "grad_outputs"),
        ("/v1/vjp", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "grad_outputs": [[1, 2], [3, 4]], "wrt": ["y"]}"#, 422, "wrt[0]"),
        ("/v1/jvp", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#, 422, "tangents"),
        ("/v1/jvp", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "tangents": {"x": [[1, 2]]}}"#, 422, "tangents.x"),
        ("/v1/jvp", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "tangents": {"z": [[1, 2]]}}"#, 422, "tangents.z"),
        ("/v1/jacobian", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "mode": "sideways"}"#, 422, "mode"),
        ("/v1/jacobian", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "wrt": ["params"]}"#, 422, "wrt[0]"),
        ("/v1/divergence", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "method": "hutchinson", "probes": 0}"#, 422, "probes"),
        (
            "/v1/forward", #"{"model": \#(tinyModel), "inputs": {"x": {"shape": [1, 2], "dtype": "float32", "encoding": "base64", "data": "AAAA"}, "t": [0]}}"#,
            422, "inputs.x.data"
        ),
        ("/v1/models", #"{"model": {"layers": []}}"#, 422, "model.layers"),
        ("/v1/models", #"{"name": 3, "model": \#(tinyModel)}"#, 422, "name"),
        ("/v1/benchmark", #"{"workload": "linear", "in": 0}"#, 422, "in"),
        // Found by schemathesis: 2^63 passed a Double bound check and trapped on conversion.
        ("/v1/divergence", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "method": "hutchinson", "seed": 9223372036854775808}"#, 422, "seed"),
        ("/v1/divergence", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "method": "hutchinson", "seed": 9223372036854775807}"#, 422, "seed"),
        ("/v1/benchmark", #"{"model": \#(tinyModel), "operation": "forward", "d": "abc"}"#, 422, "d"),
        ("/v1/benchmark", #"{"model": \#(tinyModel), "operation": "forward", "d": 5}"#, 422, "d"),
        // Finite in float64, infinite once cast to the model's float32.
        ("/v1/forward", #"{"model": \#(tinyModel), "inputs": {"x": [[1e300, 1]], "t": [0]}}"#, 422, "inputs.x"),
        ("/v1/vjp", #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "grad_outputs": [[1e300, 0], [0, 1]]}"#, 422, "grad_outputs"),
    ]

    @Test("client mistakes are problem+json naming the field", arguments: errorCases)
    func errors(path: String, text: String, status: Int, field: String?) async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            try await client.execute(uri: path, method: .post, headers: jsonHeaders, body: body(text)) { r in
                #expect(r.status.code == status, "\(r.text)")
                #expect(r.headers[.contentType] == "application/problem+json")
                #expect(r.json["status"]?.numbers == [Double(status)])
                if let field { #expect(r.problemPaths.contains(field), "\(r.text)") }
            }
        }
    }

    @Test("grads.params is an object even for a model without parameters")
    func emptyParams() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            let text =
                #"{"model": {"layers": [{"op": "tanh"}]}, "inputs": {"x": [[0.1, 0.2]]}, "grad_outputs": [[1, 1]], "wrt": ["params"], "return_outputs": false}"#
            try await client.execute(uri: "/v1/vjp", method: .post, headers: jsonHeaders, body: body(text)) { r in
                #expect(r.status == .ok)
                #expect(r.json["grads"]?["params"] == .object(JSONObject()))
            }
        }
    }

    @Test("a safetensors request body carries the tensors; tangents may come only as binary")
    func binaryRequest() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        let x = AnyTensor(Tensor<Float>(shape: [2, 2], scalars: [0.1, 0.2, 0.3, -0.4]))
        let t = AnyTensor(Tensor<Float>(shape: [2], scalars: [0.5, 1]))
        let u = AnyTensor(Tensor<Float>(shape: [2, 2], scalars: [1, 0, 0, 1]))
        let file = Safetensors.write([("inputs.x", x), ("inputs.t", t), ("tangents.x", u)], metadata: [("request", #"{"model": \#(tinyModel)}"#)])
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/jvp", method: .post, headers: [.contentType: "application/octet-stream"], body: ByteBuffer(bytes: file)) { r in
                #expect(r.status == .ok, "\(r.text)")
                #expect(r.json["jvp"]?.numbers?.count == 4)
            }
            let json = #"{"model": \#(tinyModel), "inputs": \#(tinyInputs), "tangents": {"x": [[1, 0], [0, 1]]}}"#
            try await client.execute(uri: "/v1/jvp", method: .post, headers: jsonHeaders, body: body(json)) { r in
                #expect(r.json["jvp"] != nil)
            }
        }
    }

    @Test func methodAndRouteErrors() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/forward", method: .get) { r in
                #expect(r.status == .methodNotAllowed)
                #expect(r.headers[.allow] == "POST")
            }
            try await client.execute(uri: "/v1/nothing", method: .post) { r in
                #expect(r.status == .notFound)
                #expect(r.headers[.contentType] == "application/problem+json")
            }
            try await client.execute(uri: "/v1/forward", method: .post, headers: [.contentType: "text/csv"], body: body("1,2")) { r in
                #expect(r.status == .unsupportedMediaType)
            }
        }
    }

    @Test func limits() async throws {
        let app = try await buildApplication(
            testConfiguration {
                $0.maxOutputElements = 3
                $0.maxBodyBytes = 4096
            }, logger: quietLogger())
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#)
            ) { r in
                #expect(r.status == .unprocessableContent)
                #expect(r.text.contains("limit of 3"))
            }
            let big = String(repeating: " ", count: 5000)
            try await client.execute(uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body("{\(big)}")) { r in
                #expect(r.status == .contentTooLarge)
                #expect(r.headers[.contentType] == "application/problem+json")
            }
        }
    }

    @Test func auth() async throws {
        let app = try await buildApplication(testConfiguration { $0.apiKey = "s3cret" }, logger: quietLogger())
        try await app.test(.router) { client in
            try await client.execute(uri: "/v1/info", method: .get) { r in
                #expect(r.status == .unauthorized)
                #expect(r.headers[.wwwAuthenticate]?.hasPrefix("Bearer") == true)
            }
            try await client.execute(uri: "/v1/info", method: .get, headers: [.authorization: "Bearer wrong"]) { r in #expect(r.status == .unauthorized) }
            try await client.execute(uri: "/v1/info", method: .get, headers: [.authorization: "Bearer s3cret"]) { r in #expect(r.status == .ok) }
            try await client.execute(uri: "/healthz", method: .get) { r in #expect(r.status == .ok) }
            try await client.execute(uri: "/metrics", method: .get) { r in #expect(r.status == .ok) }
        }
    }

    @Test func registry() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            let id = try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"name": "tiny", "model": \#(tinyModel)}"#))
            { r in
                #expect(r.status == .created)
                return try #require(r.json["id"]?.string)
            }
            #expect(id.count == 64)
            // Same content in another tensor form and with another name: same id, 200.
            let again =
                #"{"name": "other", "model": {"inputs": ["x", "t"], "layers": [{"op": "linear", "weight": {"shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}, "bias": [0.5, -0.5]}, {"op": "selu"}]}}"#
            try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(again)) { r in
                #expect(r.status == .ok)
                #expect(r.json["id"]?.string == id)
            }
            try await client.execute(uri: "/v1/models/\(id)", method: .get) { r in
                #expect(r.json["parameter_count"]?.numbers == [8])
                #expect(r.json["layers"] == .array([.string("linear"), .string("selu")]))
            }
            try await client.execute(uri: "/v1/models", method: .get) { r in
                guard case .array(let models)? = r.json["models"] else { Issue.record("no models array"); return }
                #expect(models.count == 1)
            }
            try await client.execute(
                uri: "/v1/vjp", method: .post, headers: jsonHeaders,
                body: body(#"{"model": "\#(id)", "inputs": \#(tinyInputs), "grad_outputs": [[1, 0], [0, 1]]}"#)
            ) { r in
                #expect(r.status == .ok)
            }
            try await client.execute(uri: "/v1/models/\(id)", method: .delete) { r in #expect(r.status == .noContent) }
            try await client.execute(uri: "/v1/models/\(id)", method: .get) { r in #expect(r.status == .notFound) }
            try await client.execute(uri: "/v1/models/\(id)", method: .delete) { r in #expect(r.status == .notFound) }
        }
    }

    @Test func benchmarkReport() async throws {
        let app = try await buildApplication(testConfiguration { $0.benchmarkMaxSeconds = 2 }, logger: quietLogger())
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/v1/benchmark", method: .post, headers: jsonHeaders,
                body: body(#"{"workload": "linear", "in": 64, "out": 64, "batch": 64, "iterations": 5}"#)
            ) { r in
                #expect(r.status == .ok, "\(r.text)")
                #expect(r.json["machine"]?["blas"]?["library"]?.string == "OpenBLAS")
                guard case .array(let results)? = r.json["results"], let first = results.first else { Issue.record("no results"); return }
                #expect(first["median_ms"]?.numbers != nil && first["gflops"]?.numbers != nil)
            }
            try await client.execute(
                uri: "/v1/benchmark", method: .post, headers: jsonHeaders,
                body: body(#"{"model": \#(tinyModel), "operation": "jacobian", "batch": 3, "iterations": 3}"#)
            ) { r in
                #expect(r.status == .ok, "\(r.text)")
                guard case .array(let results)? = r.json["results"] else { Issue.record("no results"); return }
                #expect(results.compactMap { $0["method"]?.string } == ["reverse", "forward", "auto", "rowloop"])
            }
        }
    }
}
