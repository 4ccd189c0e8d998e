import GradCodec
import GradCore
import GradServer
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

/// Small computations with nothing else running are computed on the connection's event loop
/// (`--inline-gflop`); everything else, and anything that turns out larger, on a compute thread.
@Suite("Inline computation")
struct InlineComputeTests {
    let x = AnyTensor(Tensor<Float>(shape: [2, 2], scalars: [0.1, 0.2, 0.3, -0.4]))
    let t = AnyTensor(Tensor<Float>(shape: [2], scalars: [0.5, 1]))
    let v = AnyTensor(Tensor<Float>(shape: [2, 2], scalars: [1, -1, 0.5, 2]))

    func file(_ request: String, _ extra: [(name: String, tensor: AnyTensor)] = []) -> ByteBuffer {
        ByteBuffer(bytes: Safetensors.write([("inputs.x", x), ("inputs.t", t)] + extra, metadata: [("request", request)]))
    }

    /// Forward, VJP (x and params), JVP and Jacobian of a registered model, as safetensors bodies,
    /// plus one JSON body; returns every answer's tensors by name, and the inline counter after.
    func answers(_ configure: @escaping (inout ServerConfiguration) -> Void) async throws -> (tensors: [String: [Double]], inline: Int) {
        let app = try await buildApplication(testConfiguration(configure), logger: quietLogger())
        return try await app.test(.router) { client in
            let id = try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel)}"#)) { r in
                r.json["id"]?.string ?? ""
            }
            let model = #""model": "\#(id)", "output_encoding": "safetensors""#
            let requests: [(String, ByteBuffer)] = [
                ("forward", file("{\(model)}")),
                ("vjp", file(#"{\#(model), "wrt": ["x", "t", "params"]}"#, [("grad_outputs", v)])),
                ("jvp", file("{\(model)}", [("tangents.x", v)])),
                ("jacobian", file(#"{\#(model), "wrt": ["x", "t"]}"#)),
            ]
            var tensors: [String: [Double]] = [:]
            for (op, request) in requests {
                try await client.execute(uri: "/v1/\(op)", method: .post, headers: [.contentType: "application/octet-stream"], body: request) { r in
                    #expect(r.status == .ok, "\(op): \(r.text.prefix(300))")
                    let answer = try Array(r.body.readableBytesView).withUnsafeBytes { try Safetensors.read($0) }
                    for (name, tensor) in answer.tensors { tensors["\(op) \(name)"] = Self.doubles(tensor) }
                }
            }
            let json = #"{"model": "\#(id)", "inputs": \#(tinyInputs)}"#
            try await client.execute(uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(json)) { r in
                #expect(r.status == .ok, "\(r.text.prefix(300))")
                tensors["json forward"] = r.json["outputs"]?.numbers?.map { Double($0) }
            }
            let inline = try await client.execute(uri: "/metrics", method: .get) { r in Self.counter(r.text) }
            try #require(try await waitForReadyz(client) { $0["pending"]?.numbers?.first == 0 }, "a place was not given back")
            return (tensors, inline)
        }
    }

    static func doubles(_ t: AnyTensor) -> [Double] {
        switch t {
        case .float32(let f): f.scalars.map(Double.init)
        case .float64(let d): d.scalars
        }
    }

    /// `gradserve_compute_inline_total`, 0 when absent.
    static func counter(_ metrics: String) -> Int {
        let line = metrics.split(separator: "\n").first { $0.hasPrefix("gradserve_compute_inline_total ") }
        return line.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
    }

    @Test("small computations run on the event loop and answer exactly what a compute thread answers")
    func sameAnswers() async throws {
        let inline = try await answers { _ in }
        let pooled = try await answers { $0.inlineGFLOP = 0 }
        #expect(inline.inline == 5, "every request of a tiny model, alone, is computed inline")
        #expect(pooled.inline == 0)
        #expect(inline.tensors.count == pooled.tensors.count && inline.tensors.count >= 9, "\(inline.tensors.keys.sorted())")
        for (name, values) in pooled.tensors {
            #expect(inline.tensors[name] == values, "\(name)")
        }
    }

    @Test("a plan above --inline-gflop is handed to a compute thread before anything is reserved, with the same answers")
    func handedOff() async throws {
        let pooled = try await answers { $0.inlineGFLOP = 0 }
        // 1e-15 GFLOP: every plan is larger; each request is tried inline and handed off.
        let handed = try await answers { $0.inlineGFLOP = 1e-15 }
        #expect(handed.inline == 0)
        #expect(handed.tensors == pooled.tensors)
    }

    @Test("activations count in the inline bound: a model of activations only (0 GEMM FLOPs) with many of them goes to a compute thread")
    func activationsCount() async throws {
        // 8 SELUs on [256, 64]: 131 072 activation evaluations, 13.1 M FLOP-equivalents, above 0.01 GFLOP;
        // one SELU on [4, 64]: 25 600, below.
        let app = try await buildApplication(testConfiguration { $0.inlineGFLOP = 0.01 }, logger: quietLogger())
        try await app.test(.router) { client in
            for (layers, rows, inline) in [(8, 256, 0), (1, 4, 1)] {
                let id = try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(Self.selus(layers))}"#)) {
                    r in
                    r.json["id"]?.string ?? ""
                }
                let x = AnyTensor(Tensor<Float>(shape: [rows, 64], scalars: (0..<(rows * 64)).map { Float($0 % 7) - 3 }))
                let request = ByteBuffer(bytes: Safetensors.write([("inputs.x", x)], metadata: [("request", #"{"model": "\#(id)"}"#)]))
                try await client.execute(uri: "/v1/forward", method: .post, headers: [.contentType: "application/octet-stream"], body: request) { r in
                    #expect(r.status == .ok, "\(r.text.prefix(300))")
                    #expect(r.json["outputs"]?.numbers?.count == rows * 64)
                }
                try await client.execute(uri: "/metrics", method: .get) { r in #expect(Self.counter(r.text) == inline, "\(layers) SELUs on \(rows) rows") }
            }
        }
    }

    @Test("what the event loop would spend beyond the GEMMs counts too: a JSON answer of many numbers, a deep model, a large request header")
    func otherWork() async throws {
        // Linear(2 → 16) · tanh · Linear(16 → 512) on 256 rows: ~4 MFLOP, and 131 072 numbers in the answer,
        // ~13 ms of JSON text (1.3 G FLOP-equivalents) but a copy in binary; bound at 0.2 G.
        let wide =
            #"{"inputs": ["x"], "layers": [{"op": "linear", "weight": \#(Self.matrix(16, 2))}, {"op": "tanh"}, {"op": "linear", "weight": \#(Self.matrix(512, 16))}]}"#
        // 1024 identity layers: no FLOPs, no activation evaluations, but 1024 layer steps (~2 ms, 0.2048 G).
        let deep = #"{"inputs": ["x"], "layers": [\#(Array(repeating: #"{"op": "identity"}"#, count: 1024).joined(separator: ", "))]}"#
        let app = try await buildApplication(testConfiguration { $0.inlineGFLOP = 0.2 }, logger: quietLogger())
        try await app.test(.router) { client in
            var ids: [String] = []
            for model in [wide, deep] {
                ids.append(
                    try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(model)}"#)) { r in
                        #expect(r.status == .created || r.status == .ok, "\(r.text.prefix(300))")
                        return r.json["id"]?.string ?? ""
                    })
            }
            let x = AnyTensor(Tensor<Float>(shape: [256, 2], scalars: (0..<512).map { Float($0 % 5) / 5 }))
            func request(_ id: String, _ encoding: String, padding: Int = 0) -> ByteBuffer {
                let meta = #"{"model": "\#(id)", "output_encoding": "\#(encoding)"}"#
                return ByteBuffer(bytes: Safetensors.write([("inputs.x", x)], metadata: [("request", meta), ("note", String(repeating: " ", count: padding))]))
            }
            // (model, encoding, header padding, computed inline?)
            let cases: [(String, String, Int, Bool)] = [
                (ids[0], "json", 0, false), (ids[0], "safetensors", 0, true), (ids[0], "safetensors", 70_000, false), (ids[1], "safetensors", 0, false),
            ]
            var inline = 0
            for (id, encoding, padding, expected) in cases {
                try await client.execute(
                    uri: "/v1/forward", method: .post, headers: [.contentType: "application/octet-stream"], body: request(id, encoding, padding: padding)
                ) {
                    r in
                    #expect(r.status == .ok, "\(r.text.prefix(300))")
                }
                if expected { inline += 1 }
                try await client.execute(uri: "/metrics", method: .get) { r in
                    #expect(Self.counter(r.text) == inline, "\(id == ids[0] ? "wide" : "deep") model, \(encoding) answer, \(padding) bytes of header padding")
                }
            }
        }
    }

    /// A `rows × cols` weight matrix of small numbers, as JSON.
    static func matrix(_ rows: Int, _ cols: Int) -> String {
        "["
            + (0..<rows).map { r in "[" + (0..<cols).map { c in "\(Double((r * 7 + c * 3) % 11 - 5) / 50)" }.joined(separator: ",") + "]" }.joined(
                separator: ",") + "]"
    }

    /// A model of `n` SELUs and nothing else.
    static func selus(_ n: Int) -> String {
        #"{"inputs": ["x"], "layers": [\#(Array(repeating: #"{"op": "selu"}"#, count: n).joined(separator: ", "))]}"#
    }

    @Test("a model sent in the request is decoded on a compute thread, not on the event loop")
    func inlineModelHandedOff() async throws {
        let app = try await buildApplication(testConfiguration(), logger: quietLogger())
        try await app.test(.router) { client in
            let request = #"{"model": \#(tinyModel), "inputs": \#(tinyInputs)}"#
            try await client.execute(uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(request)) { r in
                #expect(r.status == .ok, "\(r.text.prefix(300))")
            }
            try await client.execute(uri: "/metrics", method: .get) { r in #expect(Self.counter(r.text) == 0, "\(r.text)") }
        }
    }

    @Test("an inline computation obeys its deadline (504) and gives its place back")
    func deadline() async throws {
        // The model is registered by a server with the usual deadline; a second one on the same
        // data directory, whose deadline has passed by the time a body is read, then answers.
        let registering = testConfiguration()
        let app = try await buildApplication(registering, logger: quietLogger())
        let id = try await app.test(.router) { client in
            try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel)}"#)) { r in
                r.json["id"]?.string ?? ""
            }
        }
        let late = try await buildApplication(
            testConfiguration {
                $0.dataDirectory = registering.dataDirectory
                $0.deadlineSeconds = 1e-9
            }, logger: quietLogger())
        try await late.test(.router) { client in
            let request = #"{"model": "\#(id)", "inputs": \#(tinyInputs)}"#
            try await client.execute(uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(request)) { r in
                #expect(r.status == .gatewayTimeout, "\(r.text.prefix(300))")
                #expect(r.headers[.contentType] == "application/problem+json")
            }
            try await client.execute(uri: "/metrics", method: .get) { r in #expect(Self.counter(r.text) == 1, "\(r.text)") }
            try #require(try await waitForReadyz(client) { $0["pending"]?.numbers?.first == 0 }, "the place was not given back")
        }
    }
}
