import Foundation
import GradCodec
import GradCore
import GradServer
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

/// Registering, listing, describing and deleting models.
@Suite("Routes: registry")
struct RegistryRouteTests {
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
}
