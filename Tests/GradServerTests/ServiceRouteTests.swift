import Foundation
import GradCodec
import GradCore
import GradServer
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Testing

/// Health, info, methods and unknown routes, limits, the API key and the benchmark report.
@Suite("Routes: service")
struct ServiceRouteTests {
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
