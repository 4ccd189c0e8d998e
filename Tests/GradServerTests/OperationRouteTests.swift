import Foundation
import GradCodec
import GradCore
import GradServer
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

/// The five operations answer in every body form.
@Suite("Routes: operations")
struct OperationRouteTests {
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
                for k in ["read_ms", "queue_ms", "decode_ms", "compute_ms", "encode_ms"] { #expect(r.json["timing"]?[k]?.numbers != nil) }
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
    @Test("safetensors forward, VJP and reverse Jacobian answers are computed into their bodies; others are copied (gradserve_answers_total)")
    func answersInPlace() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        let x = AnyTensor(Tensor<Float>(shape: [2, 2], scalars: [0.1, 0.2, 0.3, -0.4]))
        let t = AnyTensor(Tensor<Float>(shape: [2], scalars: [0.5, 1]))
        let v = AnyTensor(Tensor<Float>(shape: [2, 2], scalars: [1, -1, 0.5, 2]))
        func file(_ request: String, _ extra: [(name: String, tensor: AnyTensor)] = []) -> ByteBuffer {
            ByteBuffer(bytes: Safetensors.write([("inputs.x", x), ("inputs.t", t)] + extra, metadata: [("request", request)]))
        }
        let model = #""model": \#(tinyModel), "output_encoding": "safetensors""#
        let inPlace: [(String, ByteBuffer)] = [
            ("forward", file("{\(model)}")),
            ("vjp", file(#"{\#(model), "wrt": ["x", "t"]}"#, [("grad_outputs", v)])),
            ("jacobian", file(#"{\#(model), "wrt": ["x", "t"], "mode": "reverse"}"#)),
        ]
        let copied: [(String, ByteBuffer)] = [
            ("vjp", file(#"{\#(model), "wrt": ["x", "params"]}"#, [("grad_outputs", v)])),
            ("jacobian", file(#"{\#(model), "mode": "forward"}"#)),
            ("jvp", file("{\(model)}", [("tangents.x", v)])),
        ]
        try await app.test(.router) { client in
            for (op, body) in inPlace + copied {
                try await client.execute(uri: "/v1/\(op)", method: .post, headers: [.contentType: "application/octet-stream"], body: body) { r in
                    #expect(r.status == .ok, "\(op): \(r.text.prefix(300))")
                    #expect(r.headers[.contentType] == "application/octet-stream")
                    // The body is a whole safetensors file, whichever way it was made.
                    let file = try Array(r.body.readableBytesView).withUnsafeBytes { try Safetensors.read($0) }
                    #expect(file.tensors["outputs"] != nil, "\(op)")
                }
            }
            try await client.execute(uri: "/metrics", method: .get) { r in
                #expect(r.text.contains(#"gradserve_answers_total{encoding="safetensors",body="in_place"} 3"#), "\(r.text)")
                #expect(r.text.contains(#"gradserve_answers_total{encoding="safetensors",body="copied"} 3"#), "\(r.text)")
            }
        }
    }
}
