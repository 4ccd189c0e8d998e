import Foundation
import GradCodec
import GradServer
import Hummingbird
import HummingbirdTesting
import Testing

/// A float64 model that starts with an activation (so the exact divergence forms the full
/// Jacobian): at B = 8 it computes for a good fraction of a second and answers 8 numbers.
func wideModel(d: Int = 784, hidden: Int = 1024) -> String {
    func matrix(_ rows: Int, _ cols: Int) -> String {
        let n = rows * cols
        var bytes = [UInt8]()
        bytes.reserveCapacity(n * 8)
        var state: UInt64 = 42
        for _ in 0..<n {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let v = (Double(state >> 11) / Double(1 << 53) - 0.5) * 0.1
            withUnsafeBytes(of: v.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
        }
        return #"{"shape": [\#(rows), \#(cols)], "dtype": "float64", "encoding": "base64", "data": "\#(Data(bytes).base64EncodedString())"}"#
    }
    return
        #"{"dtype": "float64", "layers": [{"op": "tanh"}, {"op": "linear", "weight": \#(matrix(hidden, d))}, {"op": "tanh"}, {"op": "linear", "weight": \#(matrix(hidden, hidden))}, {"op": "tanh"}, {"op": "linear", "weight": \#(matrix(d, hidden))}]}"#
}

let slowRequest = #"{"model": \#(wideModel()), "inputs": {"x": \#(zeros(8, 784))}}"#

/// Sends the slow request on its own connection (the test client's one connection would queue
/// everything behind it) and returns the status.
func sendSlow(port: Int?) async throws -> Int {
    try await TestClient.withClient(host: "127.0.0.1", port: port!) { c in
        try await c.execute(.init("/v1/divergence", method: .post, headers: jsonHeaders, body: body(slowRequest))).head.status.code
    }
}

/// Polls `/readyz` (every 20 ms, for up to 60 s) until `condition` holds for its JSON; false if it never does.
func waitForReadyz(_ client: some TestClientProtocol, _ condition: (JSONValue) -> Bool) async throws -> Bool {
    let end = ContinuousClock.now + .seconds(60)
    while ContinuousClock.now < end {
        let json = try await client.execute(uri: "/readyz", method: .get) { $0.json }
        if condition(json) { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return false
}

func zeros(_ b: Int, _ d: Int) -> String {
    "[" + Array(repeating: "[" + Array(repeating: "0.5", count: d).joined(separator: ",") + "]", count: b).joined(separator: ",") + "]"
}

/// Serialized: these tests time one server against another's load on a 2-core machine.
@Suite("Live server", .serialized)
struct LiveTests {
    @Test("health answers while a long Jacobian holds the only worker")
    func healthDuringCompute() async throws {
        let app = try await buildApplication(testConfiguration { $0.workers = 1 }, logger: quietLogger())
        try await app.test(.live) { client in
            async let long: Int = sendSlow(port: client.port)
            try #require(try await waitForReadyz(client) { $0["pending"]?.numbers?.first ?? 0 > 0 }, "the slow request never showed as pending")
            // Health answers while the worker computes: no timing is asserted (the machine may be
            // shared); a health route that waited for the compute would not answer before it ends.
            for _ in 0..<5 {
                try await client.execute(uri: "/healthz", method: .get) { r in #expect(r.status == .ok) }
            }
            let status = try await long
            #expect(status == 200)
        }
    }

    @Test("concurrent requests are all answered correctly")
    func concurrent() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.live) { client in
            let reference = try await client.execute(
                uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#)
            ) {
                $0.json["outputs"]
            }
            try await withThrowingTaskGroup(of: JSONValue?.self) { group in
                for _ in 0..<16 {
                    group.addTask {
                        try await client.execute(
                            uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#)
                        ) {
                            $0.json["outputs"]
                        }
                    }
                }
                for try await outputs in group { #expect(outputs == reference) }
            }
        }
    }

    @Test("a full queue answers 503 with Retry-After")
    func busy() async throws {
        let app = try await buildApplication(
            testConfiguration {
                $0.workers = 1
                $0.maxQueued = 0
            }, logger: quietLogger())
        try await app.test(.live) { client in
            async let first: Int = sendSlow(port: client.port)
            // Wait until the slow request holds the only worker.
            try #require(try await waitForReadyz(client) { $0["status"]?.string == "busy" }, "the slow request never filled the queue")
            try await client.execute(
                uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#)
            ) { r in
                #expect(r.status == .serviceUnavailable)
                #expect(r.headers[.retryAfter] == "1")
            }
            try await client.execute(uri: "/readyz", method: .get) { r in #expect(r.status == .serviceUnavailable) }
            #expect(try await first == 200)
        }
    }

    @Test("a request past its deadline is answered 504, and its computation stops and gives its worker back")
    func deadline() async throws {
        let app = try await buildApplication(
            testConfiguration {
                $0.deadlineSeconds = 0.05
                $0.workers = 1
            }, logger: quietLogger())
        try await app.test(.live) { client in
            try await client.execute(uri: "/v1/divergence", method: .post, headers: jsonHeaders, body: body(slowRequest)) { r in
                #expect(r.status == .gatewayTimeout)
                #expect(r.headers[.contentType] == "application/problem+json")
            }
            // The cancelled computation leaves the pool (it counts until it really stops) and
            // the memory budget, and the only worker serves the next request.
            try #require(
                try await waitForReadyz(client) { $0["pending"]?.numbers?.first == 0 && $0["memory_reserved_bytes"]?.numbers?.first == 0 },
                "the cancelled computation never stopped")
            try await client.execute(
                uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#)
            ) { r in #expect(r.status == .ok) }
        }
    }

    @Test("models survive a restart; a damaged file is skipped")
    func restart() async throws {
        let config = testConfiguration()
        let id: String
        do {
            let app = try await buildApplication(config, logger: quietLogger())
            id = try await app.test(.live) { client in
                try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"name": "tiny", "model": \#(tinyModel)}"#)) {
                    r in
                    #expect(r.status == .created)
                    return r.json["id"]?.string ?? ""
                }
            }
        }
        let models = URL(fileURLWithPath: config.dataDirectory).appendingPathComponent("models")
        let good = try Data(contentsOf: models.appendingPathComponent("\(id).json"))
        // A truncated copy under another id, and a stray temp file from an interrupted write.
        try good.prefix(good.count / 2).write(to: models.appendingPathComponent("\(String(repeating: "a", count: 64)).json"))
        try Data("partial".utf8).write(to: models.appendingPathComponent(".x.json.tmp-1"))
        let app = try await buildApplication(config, logger: quietLogger())
        try await app.test(.live) { client in
            try await client.execute(uri: "/v1/models", method: .get) { r in
                guard case .array(let list)? = r.json["models"] else { Issue.record("no list"); return }
                #expect(list.compactMap { $0["id"]?.string } == [id])
            }
            try await client.execute(uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(#"{"model": "\#(id)", "inputs": \#(tinyInputs)}"#)) {
                r in
                #expect(r.status == .ok)
            }
        }
        #expect(!FileManager.default.fileExists(atPath: models.appendingPathComponent(".x.json.tmp-1").path))
    }
}
