import Foundation
import GradCodec
import GradCore
import GradServer
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

/// Client mistakes are problem+json naming the field.
@Suite("Routes: client mistakes")
struct ErrorRouteTests {
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
}
