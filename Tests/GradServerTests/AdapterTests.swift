import Foundation
import GradCodec
import GradCore
import GradServer
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

/// The Tesseract and UM-Bridge routes at the wire level; the official clients run against them in
/// e2e/adapters (Python).
@Suite("Protocol adapters")
struct AdapterTests {
    /// Registers the tiny model and returns its id.
    func register(_ client: some TestClientProtocol) async throws -> String {
        try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel)}"#)) { r in
            r.json["id"]?.string ?? ""
        }
    }

    @Test func tesseract() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            let id = try await register(client)
            try await client.execute(uri: "/tesseract/\(id)/openapi.json", method: .get) { r in
                #expect(r.status == .ok)
                #expect(r.json["paths"]?["/jacobian"] != nil)
                #expect(r.json["components"]?["schemas"]?["ApplyInputSchema"]?["differentiable_arrays"]?["t"]?["shape"] == .array([.null]))
            }
            let inputs = #"{"x": [[0.1, 0.2], [0.3, -0.4]], "t": {"shape": [2], "dtype": "float32", "data": {"buffer": [0.5, 1.0], "encoding": "json"}}}"#
            try await client.execute(uri: "/tesseract/\(id)/apply", method: .post, headers: jsonHeaders, body: body(#"{"inputs": \#(inputs)}"#)) { r in
                #expect(r.status == .ok)
                guard case .object(let o) = r.json else { Issue.record("not an object"); return }
                #expect(o.keys == ["y"], "apply answers only its outputs")
                #expect(o["y"]?["object_type"]?.string == "array")
            }
            let jac = #"{"inputs": \#(inputs), "jac_inputs": ["x", "t"], "jac_outputs": ["y"]}"#
            try await client.execute(
                uri: "/tesseract/\(id)/jacobian", method: .post, headers: [.contentType: "application/json", .accept: "application/json+base64"],
                body: body(jac)
            ) { r in
                #expect(r.status == .ok)
                #expect(r.json["y"]?["x"]?["shape"]?.numbers == [2, 2, 2, 2])
                #expect(r.json["y"]?["t"]?["shape"]?.numbers == [2, 2, 2])
                #expect(r.json["y"]?["x"]?["data"]?["encoding"]?.string == "base64")
            }
            // The per-sample blocks sit on the diagonal; the rest is zero.
            try await client.execute(uri: "/tesseract/\(id)/jacobian", method: .post, headers: jsonHeaders, body: body(jac)) { r in
                let j = try #require(r.json["y"]?["x"]?["data"]?["buffer"]?.numbers)
                #expect(j[2] == 0 && j[3] == 0 && j[0] != 0)  // J[0, 0, 1, :] = 0, J[0, 0, 0, 0] ≠ 0
            }
            try await client.execute(
                uri: "/tesseract/\(id)/apply", method: .post, headers: jsonHeaders, body: body(#"{"inputs": {"x": [[1, 2, 3]], "t": [0]}}"#)
            ) { r in
                #expect(r.status == .unprocessableContent)
                guard case .array(let detail)? = r.json["detail"], let first = detail.first else { Issue.record("no detail list: \(r.text)"); return }
                #expect(first["loc"] == .array([.string("body"), .string("inputs"), .string("x")]))
            }
            try await client.execute(
                uri: "/tesseract/\(id)/apply", method: .post, headers: [.contentType: "application/json", .accept: "application/json+binref"],
                body: body(#"{"inputs": \#(inputs)}"#)
            ) { r in
                #expect(r.status == .notAcceptable)
            }
            try await client.execute(uri: "/tesseract/nope/health", method: .get) { r in #expect(r.status == .notFound) }
        }
    }

    @Test func umbridge() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            let id = try await register(client)
            try await client.execute(uri: "/umbridge/\(id)//Info", method: .get) { r in
                #expect(r.status == .ok, "a doubled slash still routes")
                #expect(r.json["protocolVersion"]?.numbers == [1])
            }
            try await client.execute(
                uri: "/umbridge/\(id)/InputSizes", method: .post, headers: jsonHeaders, body: body(#"{"name": "forward", "config": {"batch": 3}}"#)
            ) { r in
                #expect(r.json["inputSizes"]?.numbers == [6, 3])
            }
            // Gradient with sens = e_0 is the first row of J: selu'(z_0) · W[0, :2].
            try await client.execute(
                uri: "/umbridge/\(id)/Gradient", method: .post, headers: jsonHeaders,
                body: body(#"{"name": "forward", "outWrt": 0, "inWrt": 0, "input": [[0.1, 0.2], [0.5]], "sens": [1, 0], "config": {}}"#)
            ) { r in
                let g = try #require(r.json["output"]?.numbers)
                let z = 1 * 0.1 + 2 * 0.2 + 3 * 0.5 + 0.5
                #expect(g.count == 2 && abs(g[0] - 1.0507009873554805) < 1e-6 && abs(g[1] - 2 * 1.0507009873554805) < 1e-6, "\(g), z = \(z)")
            }
            for (text, type) in [
                (#"{"name": "forward", "input": [[0.1, 0.2, 0.3], [0.5]], "config": {}}"#, "InvalidInput"),
                (#"{"name": "backward", "input": [[0.1, 0.2], [0.5]]}"#, "ModelNotFound"),
                (#"{"name": "forward", "input": "x"}"#, "InvalidInput"),
                ("{", "InvalidInput"),
            ] {
                try await client.execute(uri: "/umbridge/\(id)/Evaluate", method: .post, headers: jsonHeaders, body: body(text)) { r in
                    #expect(r.status == .badRequest)
                    #expect(r.json["error"]?["type"]?.string == type, "\(text) → \(r.text)")
                }
            }
            try await client.execute(uri: "/umbridge/unknown/Evaluate", method: .post, headers: jsonHeaders, body: body("{}")) { r in
                #expect(r.json["error"]?["type"]?.string == "ModelNotFound")
            }
        }
    }
}
