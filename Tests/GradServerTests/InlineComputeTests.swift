import GradCodec
import GradCore
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import GradServer

/// Small computations with nothing else running are computed on the connection's event loop
/// (`--inline-ms`) once the same model has computed the same plan fast enough; everything else,
/// and anything that turns out larger, on a compute thread.
@Suite("Inline computation")
struct InlineComputeTests {
    let x = AnyTensor(Tensor<Float>(shape: [2, 2], scalars: [0.1, 0.2, 0.3, -0.4]))
    let t = AnyTensor(Tensor<Float>(shape: [2], scalars: [0.5, 1]))
    let v = AnyTensor(Tensor<Float>(shape: [2, 2], scalars: [1, -1, 0.5, 2]))

    func file(_ request: String, _ extra: [(name: String, tensor: AnyTensor)] = []) -> ByteBuffer {
        ByteBuffer(bytes: Safetensors.write([("inputs.x", x), ("inputs.t", t)] + extra, metadata: [("request", request)]))
    }

    /// Forward, VJP (x and params), JVP and Jacobian of a registered model, as safetensors bodies,
    /// plus one JSON body, each sent twice (the first of a plan is computed on a compute thread and
    /// remembered); returns every answer's tensors by name (both sends must agree), and the inline
    /// counter after.
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
            for (op, request) in requests + requests {
                try await client.execute(uri: "/v1/\(op)", method: .post, headers: [.contentType: "application/octet-stream"], body: request) { r in
                    #expect(r.status == .ok, "\(op): \(r.text.prefix(300))")
                    let answer = try Array(r.body.readableBytesView).withUnsafeBytes { try Safetensors.read($0) }
                    for (name, tensor) in answer.tensors {
                        let values = Self.doubles(tensor)
                        #expect(tensors["\(op) \(name)"].map { $0 == values } ?? true, "\(op) \(name): the repeat answered differently")
                        tensors["\(op) \(name)"] = values
                    }
                }
            }
            let json = #"{"model": "\#(id)", "inputs": \#(tinyInputs)}"#
            for _ in 0..<2 {
                try await client.execute(uri: "/v1/forward", method: .post, headers: jsonHeaders, body: body(json)) { r in
                    #expect(r.status == .ok, "\(r.text.prefix(300))")
                    tensors["json forward"] = r.json["outputs"]?.numbers?.map { Double($0) }
                }
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
        let inline = try await answers { $0.inlineMilliseconds = 1000 }
        let pooled = try await answers { $0.inlineMilliseconds = 0 }
        #expect(inline.inline == 4, "the repeat of every request of a tiny model with a binary answer, alone, is computed inline (the JSON answer's is not)")
        #expect(pooled.inline == 0)
        #expect(inline.tensors.count == pooled.tensors.count && inline.tensors.count >= 9, "\(inline.tensors.keys.sorted())")
        for (name, values) in pooled.tensors {
            #expect(inline.tensors[name] == values, "\(name)")
        }
    }

    @Test("a plan above the static bound, or one that took longer than --inline-ms last time, is handed to a compute thread with the same answers")
    func handedOff() async throws {
        let pooled = try await answers { $0.inlineMilliseconds = 0 }
        // A bound of 1e-6 FLOP-equivalents: every plan is larger; each request is tried inline and handed off.
        let overBound = try await answers {
            $0.inlineMilliseconds = 1000
            $0.inlineWorkLimit = 1e-6
        }
        // 1 ns: every plan took longer the first time.
        let tooSlow = try await answers { $0.inlineMilliseconds = 1e-6 }
        #expect(overBound.inline == 0 && tooSlow.inline == 0)
        #expect(overBound.tensors == pooled.tensors && tooSlow.tensors == pooled.tensors)
    }

    @Test("only a repeat runs inline: the same model and plan; another batch size is another plan")
    func repeatsOnly() async throws {
        let app = try await buildApplication(testConfiguration { $0.inlineMilliseconds = 1000 }, logger: quietLogger())
        try await app.test(.router) { client in
            let id = try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(tinyModel)}"#)) { r in
                r.json["id"]?.string ?? ""
            }
            func forward(rows: Int) -> ByteBuffer {
                let x = AnyTensor(Tensor<Float>(shape: [rows, 2], scalars: (0..<(rows * 2)).map { Float($0 % 3) }))
                let t = AnyTensor(Tensor<Float>(shape: [rows], scalars: Array(repeating: 0.5, count: rows)))
                return ByteBuffer(
                    bytes: Safetensors.write(
                        [("inputs.x", x), ("inputs.t", t)], metadata: [("request", #"{"model": "\#(id)", "output_encoding": "safetensors"}"#)]))
            }
            // (rows, inline count after)
            for (rows, expected) in [(2, 0), (3, 0), (2, 1), (3, 2), (4, 2), (4, 3)] {
                try await client.execute(uri: "/v1/forward", method: .post, headers: [.contentType: "application/octet-stream"], body: forward(rows: rows)) {
                    r in
                    #expect(r.status == .ok, "\(r.text.prefix(300))")
                }
                try await client.execute(uri: "/metrics", method: .get) { r in #expect(Self.counter(r.text) == expected, "after a forward of \(rows) rows") }
            }
        }
    }

    @Test("activations count in the inline bound, each at its cost: many SELUs, or one tanh (a libm call), go to a compute thread")
    func activationsCount() async throws {
        // Each sent twice. At 0.01 G FLOP-equivalents: 8 SELUs on [256, 64] are 131 072 evaluations at 100 (13 M), above;
        // one SELU on [64, 64] 4 096 (0.4 M), below; one tanh on [64, 64] 4 096 at 3 000 (12 M), above.
        let app = try await buildApplication(
            testConfiguration {
                $0.inlineMilliseconds = 1000
                $0.inlineWorkLimit = 0.01e9
            }, logger: quietLogger())
        try await app.test(.router) { client in
            var inline = 0
            for (op, layers, rows, expected) in [("selu", 8, 256, false), ("selu", 1, 64, true), ("tanh", 1, 64, false)] {
                let id = try await client.execute(
                    uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(Self.activations(op, layers))}"#)
                ) {
                    r in
                    r.json["id"]?.string ?? ""
                }
                let x = AnyTensor(Tensor<Float>(shape: [rows, 64], scalars: (0..<(rows * 64)).map { Float($0 % 7) - 3 }))
                let request = ByteBuffer(
                    bytes: Safetensors.write([("inputs.x", x)], metadata: [("request", #"{"model": "\#(id)", "output_encoding": "safetensors"}"#)]))
                for _ in 0..<2 {
                    try await client.execute(uri: "/v1/forward", method: .post, headers: [.contentType: "application/octet-stream"], body: request) { r in
                        #expect(r.status == .ok, "\(r.text.prefix(300))")
                        let answer = try Array(r.body.readableBytesView).withUnsafeBytes { try Safetensors.read($0) }
                        #expect(answer.tensors["outputs"]?.shape == [rows, 64])
                    }
                }
                if expected { inline += 1 }
                try await client.execute(uri: "/metrics", method: .get) { r in #expect(Self.counter(r.text) == inline, "\(layers) \(op) on \(rows) rows") }
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
        // Linear(1 → 4) · Linear(4 → 2): a forward-mode Jacobian of 4096 samples makes 16 384 small BLAS calls
        // (~3 ms, 0.33 G) for almost no FLOPs.
        let narrow = #"{"inputs": ["x"], "layers": [{"op": "linear", "weight": \#(Self.matrix(4, 1))}, {"op": "linear", "weight": \#(Self.matrix(2, 4))}]}"#
        let deep = #"{"inputs": ["x"], "layers": [\#(Array(repeating: #"{"op": "identity"}"#, count: 1024).joined(separator: ", "))]}"#
        let app = try await buildApplication(
            testConfiguration {
                $0.inlineMilliseconds = 1000
                $0.inlineWorkLimit = 0.2e9
            }, logger: quietLogger())
        try await app.test(.router) { client in
            var ids: [String: String] = [:]
            for (name, model) in [("wide", wide), ("deep", deep), ("narrow", narrow)] {
                ids[name] = try await client.execute(uri: "/v1/models", method: .post, headers: jsonHeaders, body: body(#"{"model": \#(model)}"#)) { r in
                    #expect(r.status == .created || r.status == .ok, "\(r.text.prefix(300))")
                    return r.json["id"]?.string ?? ""
                }
            }
            func request(_ model: String, rows: Int, width: Int, _ encoding: String, padding: Int) -> ByteBuffer {
                let x = AnyTensor(Tensor<Float>(shape: [rows, width], scalars: (0..<(rows * width)).map { Float($0 % 5) / 5 }))
                let meta = #"{"model": "\#(ids[model] ?? "")", "output_encoding": "\#(encoding)"}"#
                return ByteBuffer(bytes: Safetensors.write([("inputs.x", x)], metadata: [("request", meta), ("note", String(repeating: " ", count: padding))]))
            }
            // (model, operation, rows, encoding, header padding, computed inline?)
            let cases: [(String, String, Int, String, Int, Bool)] = [
                ("wide", "forward", 256, "json", 0, false), ("wide", "forward", 256, "safetensors", 0, true),
                ("wide", "forward", 256, "safetensors", 70_000, false), ("deep", "forward", 256, "safetensors", 0, false),
                ("narrow", "jacobian", 16, "safetensors", 0, true), ("narrow", "jacobian", 4096, "safetensors", 0, false),
            ]
            var inline = 0
            for (model, op, rows, encoding, padding, expected) in cases {
                let width = model == "narrow" ? 1 : 2
                for _ in 0..<2 {  // the first of a plan is remembered, the repeat may run inline
                    try await client.execute(
                        uri: "/v1/\(op)", method: .post, headers: [.contentType: "application/octet-stream"],
                        body: request(model, rows: rows, width: width, encoding, padding: padding)
                    ) { r in
                        #expect(r.status == .ok, "\(r.text.prefix(300))")
                    }
                }
                if expected { inline += 1 }
                try await client.execute(uri: "/metrics", method: .get) { r in
                    #expect(Self.counter(r.text) == inline, "\(model) model, \(op) of \(rows) rows, \(encoding) answer, \(padding) bytes of header padding")
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

    /// A model of `n` activations `op` and nothing else.
    static func activations(_ op: String, _ n: Int) -> String {
        #"{"inputs": ["x"], "layers": [\#(Array(repeating: #"{"op": "\#(op)"}"#, count: n).joined(separator: ", "))]}"#
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

    @Test("a banned model's plans are not run inline until the ban ends; a full history forgets")
    func history() async throws {
        let h = InlineHistory()
        func key(_ model: String, _ n: Int) -> InlineHistory.Key {
            InlineHistory.Key(
                model: model, path: "outputs", outputs: n, flops: n, work: n, peakBytes: n, inputElements: n, answerBytesPerNumber: 4, binaryBodyBytes: n)
        }
        h.record(key("a", 1), seconds: 0.001)
        h.record(key("b", 1), seconds: 0.002)
        #expect(h.lastSeconds(key("a", 1)) == 0.001 && h.lastSeconds(key("a", 2)) == nil)
        h.ban(model: "a", for: .milliseconds(50))
        #expect(h.lastSeconds(key("a", 1)) == nil, "banned")
        #expect(h.lastSeconds(key("b", 1)) == 0.002, "another model is not")
        try await Task.sleep(for: .milliseconds(80))
        #expect(h.lastSeconds(key("a", 1)) == 0.001, "the ban has ended")
        for n in 0..<InlineHistory.capacity { h.record(key("c", 100 + n), seconds: 0.001) }
        #expect(h.lastSeconds(key("a", 1)) == nil && h.lastSeconds(key("c", 100 + InlineHistory.capacity - 1)) == 0.001, "full: forgot all but the newest")
    }
}
