import GradCodec
import GradCore
import Hummingbird

/// The UM-Bridge protocol (version 1.0) for every registered model, under `/umbridge/{id}/`, so
/// that `umbridge.HTTPModel(server + "/umbridge/" + id, "forward")` works unchanged.
///
/// One model named `forward`. By default one point per call: inputs `[x (D)]`, or `[x (D), t (1)]`
/// for time-varying models; output `[y (D')]`. With `config: {"batch": B}` a call carries B points
/// flattened row-major: `[x (B·D), t (B)]` → `[y (B·D')]`. `Gradient` is the VJP `sensᵀJ` and
/// `ApplyJacobian` the JVP `J·vec`. Every error is UM-Bridge's `{"error": {"type", "message"}}`
/// (the client reads no status code).
struct UMBridgeController: Sendable {
    typealias Context = GradRequestContext
    let registry: ModelRegistry
    let pipeline: RequestPipeline

    func addRoutes(to router: Router<Context>) {
        let group = router.group("umbridge/:id")
        group.add(middleware: UMBridgeErrorMiddleware())
        if let key = pipeline.configuration.apiKey { group.add(middleware: AuthMiddleware(apiKey: key)) }
        group.get("Info") { _, context in
            // The client reads Info without checking for an error object; an unknown id lists no
            // models, so the client raises its own "Model forward not supported by server!".
            let known = (try? model(context)) != nil
            return json(known ? #"{"protocolVersion":1.0,"models":["forward"]}"# : #"{"protocolVersion":1.0,"models":[]}"#)
        }
        for route in ["ModelInfo", "InputSizes", "OutputSizes", "Evaluate", "Gradient", "ApplyJacobian", "ApplyHessian"] {
            group.post(RouterPath(route)) { request, context in try await handle(route, request, context) }
        }
    }

    private func model(_ context: Context) throws -> AnyModel {
        let id = try context.parameters.require("id")
        guard let entry = registry.get(id) else {
            throw UMBridgeError(type: "ModelNotFound", message: "no registered model has id \(id); register it with POST /v1/models")
        }
        return entry.model
    }

    private func json(_ s: String) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    func handle(_ route: String, _ request: Request, _ context: Context) async throws -> Response {
        let model = try model(context)
        let bytes = try await pipeline.run(request, context) { job -> [UInt8] in
            let value = try job.body.withUnsafeReadableBytes { try JSONParser.parse($0) }
            guard case .object(let root) = value else { throw UMBridgeError(type: "InvalidInput", message: "the body must be a JSON object") }
            var w = JSONWriter()
            try UMBridgeEndpoints(model: model, root: root, job: job).run(route, into: &w)
            return w.takeBytes()
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}

/// An error in UM-Bridge's own terms.
struct UMBridgeError: Error {
    var type: String
    var message: String
    var status: HTTPResponse.Status = .badRequest
}

/// The UM-Bridge routes on a decoded body.
struct UMBridgeEndpoints {
    let model: AnyModel
    let root: JSONObject
    let job: Job

    func run(_ route: String, into w: inout JSONWriter) throws {
        do {
            try runChecked(route, into: &w)
        } catch .invalid(let issues) as GradError {
            throw UMBridgeError(type: "InvalidInput", message: issues.map { "\(PlaceNames.umbridge($0.place)): \($0.message)" }.joined(separator: "; "))
        } catch .outputTooLarge(_, let elements, let limit) as GradError {
            throw UMBridgeError(type: "InvalidInput", message: "the answer would hold \(elements) numbers, above the server's limit of \(limit)")
        } catch .limitExceeded(_, let limit, let message) as GradError {
            throw UMBridgeError(type: "InvalidInput", message: "\(message) (\(limit))")
        }
    }

    private func runChecked(_ route: String, into w: inout JSONWriter) throws {
        switch root["name"] {
        case nil, .string("forward")?: break
        case .string(let name)?: throw UMBridgeError(type: "ModelNotFound", message: "Model \(name) not found! The following are available: [forward]")
        default: throw UMBridgeError(type: "InvalidInput", message: "name must be a string")
        }
        if route == "ModelInfo" {
            _ = try layout(requireD: false)  // validates config; a model of activations only needs no d here
            w.beginObject()
            w.key("support")
            w.beginObject()
            for (k, v) in [("Evaluate", true), ("Gradient", true), ("ApplyJacobian", true), ("ApplyHessian", false)] {
                w.key(k)
                w.bool(v)
            }
            w.endObject()
            w.endObject()
            return
        }
        let (b, d) = try layout()
        try model.checkBatchShape(batch: b, d: d)
        let dOut = model.outputWidth(d: d)
        let flat = Count(b) * d
        guard !flat.overflowed else { throw UMBridgeError(type: "InvalidInput", message: "config.batch × d is too large") }
        let inputSizes = model.hasT ? [flat.value, b] : [flat.value]
        // The points are copied once into rows and once into the model's tensor.
        let inputElements = (flat + b) * 2
        func admit(_ planned: PlannedOperation) throws {
            try job.admit(
                model.plan(planned, batch: b, d: d), path: "input", inputElements: inputElements,
                answerBytesPerNumber: OperationRunner.bytesPerNumber(.json, model.dtype))
        }
        let outputSize = Count(b) * dOut
        w.beginObject()
        switch route {
        case "InputSizes":
            w.key("inputSizes")
            w.beginArray()
            for n in inputSizes { w.number(n) }
            w.endArray()
        case "OutputSizes":
            w.key("outputSizes")
            w.beginArray()
            w.number(outputSize.value)
            w.endArray()
        case "Evaluate":
            try admit(.forward)
            let args = try arguments(b: b, d: d, sizes: inputSizes)
            w.key("output")
            w.beginArray()
            writeFlat(try model.forward(args), into: &w)
            w.endArray()
        case "Gradient":
            let inWrt = try wrt("inWrt", count: inputSizes.count)
            _ = try wrt("outWrt", count: 1)
            try admit(.vjp(k: 1, wrt: [inWrt == 0 ? .x : .t], returnOutputs: false))
            let args = try arguments(b: b, d: d, sizes: inputSizes)
            let sens = try vector("sens", length: outputSize.value, shape: [b, dOut])
            let r = try model.vjp(args, gradOutputs: sens, isGradsBatched: false, wrt: [inWrt == 0 ? .x : .t], returnOutputs: false)
            w.key("output")
            writeFlat((inWrt == 0 ? r.x : r.t)!, into: &w)
        case "ApplyJacobian":
            let inWrt = try wrt("inWrt", count: inputSizes.count)
            _ = try wrt("outWrt", count: 1)
            try admit(.jvp(k: 1, returnOutputs: false))
            let args = try arguments(b: b, d: d, sizes: inputSizes)
            let vec = try vector("vec", length: inputSizes[inWrt], shape: inWrt == 0 ? [b, d] : [b])
            let r = try model.jvp(args, tangentX: inWrt == 0 ? vec : nil, tangentT: inWrt == 1 ? vec : nil, returnOutputs: false)
            w.key("output")
            writeFlat(r.jvp, into: &w)
        default:
            throw UMBridgeError(type: "UnsupportedFeature", message: "\(route) is not supported by this model")
        }
        w.endObject()
    }

    /// B from `config.batch` (default 1) and D from the model (or `config.d` for models without linear layers).
    private func layout(requireD: Bool = true) throws -> (Int, Int) {
        var config = JSONObject()
        if let c = root["config"] {
            guard case .object(let o) = c else { throw UMBridgeError(type: "InvalidInput", message: "config must be an object") }
            config = o
        }
        func int(_ key: String) throws -> Int? {
            guard let v = config[key] else { return nil }
            guard case .number(let n) = v, let i = Int(exactly: n), i >= 1, i <= 1 << 20 else {
                throw UMBridgeError(type: "InvalidInput", message: "config.\(key) must be an integer in 1...\(1 << 20)")
            }
            return i
        }
        let b = try int("batch") ?? 1
        let givenD = try int("d")
        if !requireD { return (b, givenD ?? 0) }
        guard let d = model.inputWidth ?? givenD else {
            throw UMBridgeError(type: "InvalidInput", message: "config.d is required for a model without linear layers (the feature count of x)")
        }
        return (b, d)
    }

    private func arguments(b: Int, d: Int, sizes: [Int]) throws -> AnyModel.Arguments {
        guard let input = root["input"] else { throw UMBridgeError(type: "InvalidInput", message: "input is required") }
        var vectors: [[Double]] = []
        switch input {
        case .numbers(let shape, let values) where shape.count == 2:
            vectors = (0..<shape[0]).map { Array(values[($0 * shape[1])..<(($0 + 1) * shape[1])]) }
        case .array(let items):
            for (i, item) in items.enumerated() {
                switch item {
                case .numbers(let s, let v) where s.count == 1: vectors.append(v)
                default: throw UMBridgeError(type: "InvalidInput", message: "input[\(i)] must be a list of numbers")
                }
            }
        default:
            throw UMBridgeError(type: "InvalidInput", message: "input must be a list of lists of numbers")
        }
        guard vectors.count == sizes.count else {
            throw UMBridgeError(
                type: "InvalidInput",
                message: "Number of input parameters does not match model number of model inputs! Expected \(sizes.count) but got \(vectors.count)")
        }
        for (i, (v, n)) in zip(vectors, sizes).enumerated() where v.count != n {
            throw UMBridgeError(type: "InvalidInput", message: "Input parameter \(i) has invalid length! Expected \(n) but got \(v.count)")
        }
        for (i, v) in vectors.enumerated() where FiniteCheck.firstNonFinite(v) != nil {
            throw UMBridgeError(type: "InvalidInput", message: "Input parameter \(i) holds a non-finite value")
        }
        return AnyModel.Arguments(
            x: .float64(Tensor(shape: [b, d], scalars: vectors[0])),
            t: model.hasT ? .float64(Tensor(shape: [b], scalars: vectors[1])) : nil)
    }

    private func wrt(_ key: String, count: Int) throws -> Int {
        guard case .number(let n)? = root[key], let i = Int(exactly: n), (0..<count).contains(i) else {
            throw UMBridgeError(type: "InvalidInput", message: "\(key) must be an integer in 0..<\(count)")
        }
        return i
    }

    private func vector(_ key: String, length: Int, shape: [Int]) throws -> AnyTensor {
        guard case .numbers(let s, let v)? = root[key], s.count == 1 || (s == [0] && length == 0) else {
            throw UMBridgeError(type: "InvalidInput", message: "\(key) must be a list of numbers")
        }
        guard v.count == length else { throw UMBridgeError(type: "InvalidInput", message: "\(key) has invalid length! Expected \(length) but got \(v.count)") }
        guard FiniteCheck.firstNonFinite(v) == nil else { throw UMBridgeError(type: "InvalidInput", message: "\(key) holds a non-finite value") }
        return .float64(Tensor(shape: shape, scalars: v))
    }

    private func writeFlat(_ t: AnyTensor, into w: inout JSONWriter) {
        w.beginArray()
        switch t {
        case .float32(let f): for v in f.scalars { w.number(Double(v)) }
        case .float64(let d): for v in d.scalars { w.number(v) }
        }
        w.endArray()
    }
}

/// Every failure on the UM-Bridge routes as `{"error": {"type", "message"}}`.
struct UMBridgeErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as UMBridgeError {
            return Self.error(e.type, e.message, e.status)
        } catch {
            let problem = Problem.from(error, names: .umbridge)
            let type: String =
                switch problem?.status {
                case .unauthorized?: "Unauthorized"
                case .notFound?: "ModelNotFound"
                case .serviceUnavailable?, .gatewayTimeout?: "Unavailable"
                case .badRequest?, .unprocessableContent?, .contentTooLarge?: "InvalidInput"
                default: "InternalError"
                }
            let message =
                problem.map { p in p.errors.isEmpty ? p.detail : p.errors.map { "\($0.path): \($0.message)" }.joined(separator: "; ") } ?? "internal error"
            let status: HTTPResponse.Status = problem?.status == .unprocessableContent ? .badRequest : (problem?.status ?? .internalServerError)
            return Self.error(type, message, status, headers: problem?.headers ?? [:])
        }
    }

    static func error(_ type: String, _ message: String, _ status: HTTPResponse.Status, headers: HTTPFields = [:]) -> Response {
        var w = JSONWriter()
        w.beginObject()
        w.key("error")
        w.beginObject()
        w.key("type")
        w.string(type)
        w.key("message")
        w.string(message)
        w.endObject()
        w.endObject()
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: w.takeBytes())))
    }
}
