import GradCodec
import GradCore
import Hummingbird

/// The Tesseract protocol for every registered model, under `/tesseract/{id}/`, so that
/// `tesseract_core.Tesseract.from_url(server + "/tesseract/" + id)` and tesseract-jax work unchanged.
///
/// Inputs `x` `[B, D]` and, for time-varying models, `t` `[B]`; output `y` `[B, D']`. The
/// Jacobian has Tesseract's shape `(*y.shape, *x.shape)`: block-diagonal `[B, D', B, D]`.
/// A 422 is Tesseract's `{"detail": [{"type", "loc", "msg"}]}` (the SDK raises pydantic's
/// ValidationError from it); other errors are problem+json (the SDK raises RuntimeError).
/// Apply answers carry no extra keys (tesseract-jax flattens them); timing is in `Server-Timing`.
struct TesseractController: Sendable {
    typealias Context = GradRequestContext
    let registry: ModelRegistry
    let pipeline: RequestPipeline

    func addRoutes(to router: Router<Context>) {
        let group = router.group("tesseract/:id")
        group.add(middleware: TesseractErrorMiddleware())
        if let key = pipeline.configuration.apiKey { group.add(middleware: AuthMiddleware(apiKey: key)) }
        group.get("health") { _, context in
            _ = try model(context)
            return json(#"{"status":"ok"}"#)
        }
        group.get("openapi.json") { _, context in
            let (id, entry) = try model(context)
            return Response(
                status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: Self.openAPI(id: id, model: entry))))
        }
        for endpoint in ["apply", "abstract_eval", "vector_jacobian_product", "jacobian_vector_product", "jacobian"] {
            group.post(RouterPath(endpoint)) { request, context in try await handle(endpoint, request, context) }
        }
    }

    private func model(_ context: Context) throws -> (String, AnyModel) {
        let id = try context.parameters.require("id")
        guard let entry = registry.get(id) else {
            throw Problem(.notFound, title: "Unknown model", detail: "no registered model has id \(id); register it with POST /v1/models")
        }
        return (id, entry.model)
    }

    private func json(_ s: String) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    func handle(_ endpoint: String, _ request: Request, _ context: Context) async throws -> Response {
        let (_, model) = try model(context)
        guard let format = TesseractArrays.format(accept: request.headers[.accept]) else {
            throw Problem(
                .notAcceptable, title: "Not acceptable",
                detail: "available formats: application/json, application/json+base64 (uncompressed, gpu_transport=none)")
        }
        let (bytes, timing) = try await pipeline.run(request, context) { job -> ([UInt8], String) in
            let clock = ContinuousClock()
            let t0 = clock.now
            let doc = try job.body.withUnsafeReadableBytes { try JSONParser.parse($0) }
            guard case .object(let root) = doc else { throw GradError.invalid("body", "expected a JSON object") }
            var w = JSONWriter()
            try TesseractEndpoints(model: model, root: root, format: format, job: job).run(endpoint, into: &w)
            let t1 = clock.now
            return (
                w.takeBytes(),
                "queue;dur=\(String(format: "%.3f", job.queueSeconds * 1000)), compute;dur=\(String(format: "%.3f", Stopwatch.seconds(t1 - t0) * 1000))"
            )
        }
        var headers = HTTPFields()
        headers[.contentType] = format == .json ? "application/json" : "application/json+base64"
        headers[.serverTiming] = timing
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// What the SDK and tesseract-jax read: relative `paths`, the supported formats, and the
    /// apply schemas marking x, t and y differentiable with their shapes and dtype.
    static func openAPI(id: String, model: AnyModel) -> [UInt8] {
        var w = JSONWriter()
        let dtype = model.dtype.rawValue
        let d = model.inputWidth
        let dOut = d.map { model.outputWidth(d: $0) }
        let inputs = model.hasT ? ["x", "t"] : ["x"]
        func shape(_ rank2: Bool, _ width: Int?) {
            w.beginArray()
            w.null()
            if rank2 { if let width { w.number(width) } else { w.null() } }
            w.endArray()
        }
        func arrayProperty(_ name: String, rank2: Bool, width: Int?) {
            w.key(name)
            w.beginObject()
            w.key("title")
            w.string(name)
            w.key("type")
            w.string("object")
            w.key("array_flags")
            w.beginArray()
            w.string("DIFFERENTIABLE")
            w.endArray()
            w.key("properties")
            w.beginObject()
            w.key("object_type")
            w.beginObject()
            w.key("const")
            w.string("array")
            w.endObject()
            w.key("shape")
            w.beginObject()
            w.key("type")
            w.string("array")
            w.endObject()
            w.key("dtype")
            w.beginObject()
            w.key("enum")
            w.beginArray()
            w.string(dtype)
            w.endArray()
            w.endObject()
            w.endObject()
            w.endObject()
        }
        func differentiable(_ names: [(String, Bool, Int?)]) {
            w.key("differentiable_arrays")
            w.beginObject()
            for (name, rank2, width) in names {
                w.key(name)
                w.beginObject()
                w.key("shape")
                shape(rank2, width)
                w.key("dtype")
                w.string(dtype)
                w.endObject()
            }
            w.endObject()
        }
        let inSpecs: [(String, Bool, Int?)] = inputs.map { ($0, $0 == "x", d) }
        w.beginObject()
        w.key("openapi")
        w.string("3.1.0")
        w.key("info")
        w.beginObject()
        w.key("title")
        w.string("gradserve model \(id)")
        w.key("version")
        w.string(GradserveVersion.current)
        w.endObject()
        w.key("x-supported-output-formats")
        w.beginArray()
        w.string("json")
        w.string("json+base64")
        w.endArray()
        w.key("x-supported-gpu-transports")
        w.beginArray()
        w.string("none")
        w.endArray()
        w.key("x-supported-compressions")
        w.beginArray()
        w.string("none")
        w.endArray()
        w.key("paths")
        w.beginObject()
        for (path, method) in [
            ("/health", "get"), ("/apply", "post"), ("/abstract_eval", "post"), ("/vector_jacobian_product", "post"),
            ("/jacobian_vector_product", "post"), ("/jacobian", "post"),
        ] {
            w.key(path)
            w.beginObject()
            w.key(method)
            w.beginObject()
            w.key("operationId")
            w.string(String(path.dropFirst()))
            w.endObject()
            w.endObject()
        }
        w.endObject()
        w.key("components")
        w.beginObject()
        w.key("schemas")
        w.beginObject()
        w.key("Apply_InputSchema")
        w.beginObject()
        w.key("type")
        w.string("object")
        w.key("properties")
        w.beginObject()
        for (name, rank2, width) in inSpecs { arrayProperty(name, rank2: rank2, width: width) }
        w.endObject()
        w.key("required")
        w.beginArray()
        for name in inputs { w.string(name) }
        w.endArray()
        w.endObject()
        w.key("Apply_OutputSchema")
        w.beginObject()
        w.key("type")
        w.string("object")
        w.key("properties")
        w.beginObject()
        arrayProperty("y", rank2: true, width: dOut)
        w.endObject()
        w.endObject()
        w.key("ApplyInputSchema")
        w.beginObject()
        w.key("properties")
        w.beginObject()
        w.key("inputs")
        w.beginObject()
        w.key("$ref")
        w.string("#/components/schemas/Apply_InputSchema")
        w.endObject()
        w.endObject()
        differentiable(inSpecs)
        w.endObject()
        w.key("ApplyOutputSchema")
        w.beginObject()
        w.key("$ref")
        w.string("#/components/schemas/Apply_OutputSchema")
        differentiable([("y", true, dOut)])
        w.endObject()
        w.endObject()
        w.endObject()
        w.endObject()
        return w.takeBytes()
    }
}

/// The five compute endpoints of the Tesseract protocol, on a decoded body.
struct TesseractEndpoints {
    let model: AnyModel
    let root: JSONObject
    let format: TesseractArrays.Format
    let job: Job

    func run(_ endpoint: String, into w: inout JSONWriter) throws {
        let allowed: Set<String> =
            switch endpoint {
            case "vector_jacobian_product": ["inputs", "vjp_inputs", "vjp_outputs", "cotangent_vector"]
            case "jacobian_vector_product": ["inputs", "jvp_inputs", "jvp_outputs", "tangent_vector"]
            case "jacobian": ["inputs", "jac_inputs", "jac_outputs"]
            default: ["inputs"]
            }
        for key in root.keys where !allowed.contains(key) { throw GradError.invalid(key, "extra field not permitted") }
        if endpoint == "abstract_eval" { return try abstractEval(into: &w) }
        // Shapes first, from the arrays' headers: checked and planned before any data is decoded.
        let (b, d, inputElements) = try inputShapes()
        let dOut = model.outputWidth(d: d)
        let s = model.dtype.byteCount
        let perNumber = OperationRunner.bytesPerNumber(format == .json ? .json : .base64, model.dtype)
        func admit(_ planned: PlannedOperation, path: String, answer: Count? = nil, extra: Count = .zero, more: Count = .zero) throws {
            try job.admit(
                model.plan(planned, batch: b, d: d), path: path, answerElements: answer, extraBytes: extra, inputElements: inputElements + more,
                answerBytesPerNumber: perNumber)
        }
        w.beginObject()
        switch endpoint {
        case "apply":
            try admit(.forward, path: "y")
            let args = try arguments()
            w.key("y")
            TesseractArrays.write(try model.forward(args), format: format, into: &w)
        case "vector_jacobian_product":
            let wrt = try names("vjp_inputs", among: inputNames)
            _ = try names("vjp_outputs", among: ["y"])
            guard case .object(let cot)? = root["cotangent_vector"], let yv = cot["y"] else {
                throw GradError.invalid("cotangent_vector.y", "required: the cotangent of y, shaped like y")
            }
            let cotangent = Count.product(try TesseractArrays.shape(of: yv, at: "cotangent_vector.y"))
            try admit(.vjp(k: 1, wrt: Set(wrt.compactMap(GradTarget.init)), returnOutputs: false), path: "cotangent_vector.y", more: cotangent)
            let args = try arguments()
            let v = try TesseractArrays.decode(yv, at: "cotangent_vector.y")
            let r = try model.vjp(args, gradOutputs: v, isGradsBatched: false, wrt: Set(wrt.compactMap(GradTarget.init)), returnOutputs: false)
            for name in wrt.sorted() {
                w.key(name)
                TesseractArrays.write((name == "x" ? r.x : r.t)!, format: format, into: &w)
            }
        case "jacobian_vector_product":
            let wrt = try names("jvp_inputs", among: inputNames)
            _ = try names("jvp_outputs", among: ["y"])
            guard case .object(let tan)? = root["tangent_vector"] else { throw GradError.invalid("tangent_vector", "required") }
            for key in tan.keys where !wrt.contains(key) { throw GradError.invalid("tangent_vector.\(key)", "not one of jvp_inputs") }
            var tangentElements = Count.zero
            for (key, v) in tan.entries { tangentElements += Count.product(try TesseractArrays.shape(of: v, at: "tangent_vector.\(key)")) }
            try admit(.jvp(k: 1, returnOutputs: false), path: "tangent_vector", more: tangentElements)
            let args = try arguments()
            let tx = try wrt.contains("x") ? tan["x"].map { try TesseractArrays.decode($0, at: "tangent_vector.x") } : nil
            let tt = try wrt.contains("t") ? tan["t"].map { try TesseractArrays.decode($0, at: "tangent_vector.t") } : nil
            // Tesseract tangents have their input's shape exactly (no leading K as in /v1/jvp).
            if let tx, tx.shape != args.x.shape {
                throw GradError.invalid("tangent_vector.x", "expected shape \(Shape.describe(args.x.shape)) like inputs.x, got \(Shape.describe(tx.shape))")
            }
            if let tt, let t = args.t, tt.shape != t.shape {
                throw GradError.invalid("tangent_vector.t", "expected shape \(Shape.describe(t.shape)) like inputs.t, got \(Shape.describe(tt.shape))")
            }
            let r = try model.jvp(args, tangentX: tx, tangentT: tt, returnOutputs: false)
            w.key("y")
            TesseractArrays.write(r.jvp, format: format, into: &w)
        case "jacobian":
            let wrt = try names("jac_inputs", among: inputNames)
            _ = try names("jac_outputs", among: ["y"])
            // Tesseract's Jacobian spans the batch: (*y.shape, *x.shape), zero off the diagonal blocks.
            var size = Count.zero
            if wrt.contains("x") { size += Count(b) * dOut * b * d }
            if wrt.contains("t") { size += Count(b) * dOut * b }
            try admit(
                .jacobian(wrt: Set(wrt.compactMap(GradTarget.init)), mode: .auto, returnOutputs: false), path: "jacobian", answer: size, extra: size * s)
            let args = try arguments()
            let r = try model.jacobian(args, wrt: Set(wrt.compactMap(GradTarget.init)), mode: .auto)
            w.key("y")
            w.beginObject()
            for name in wrt.sorted() {
                w.key(name)
                let perSample = (name == "x" ? r.x : r.t)!
                TesseractArrays.write(Self.blockDiagonal(perSample, batch: b, rows: dOut, cols: name == "x" ? d : nil), format: format, into: &w)
            }
            w.endObject()
        default:
            throw GradError.invalid("endpoint", "unknown")
        }
        w.endObject()
    }

    var inputNames: [String] { model.hasT ? ["x", "t"] : ["x"] }

    /// B and D from the header of `inputs.x` (and `inputs.t`'s shape), checked against the model;
    /// the elements of both.
    private func inputShapes() throws -> (Int, Int, Count) {
        guard case .object(let inputs)? = root["inputs"] else { throw GradError.invalid("inputs", "required: {\"x\": …\(model.hasT ? ", \"t\": …" : "")}") }
        for key in inputs.keys where !inputNames.contains(key) { throw GradError.invalid("inputs.\(key)", "extra field not permitted") }
        guard let x = inputs["x"] else { throw GradError.invalid("inputs.x", "field required") }
        let xs = try TesseractArrays.shape(of: x, at: "inputs.x")
        guard xs.count == 2 else { throw GradError.invalid("inputs.x", "expected a [B, D] array, got shape \(Shape.describe(xs))") }
        try model.checkBatchShape(batch: xs[0], d: xs[1])
        var elements = Count.product(xs)
        if let t = inputs["t"] {
            let ts = try TesseractArrays.shape(of: t, at: "inputs.t")
            guard ts == [xs[0]] else { throw GradError.invalid("inputs.t", "expected shape [\(xs[0])] (one t per sample), got \(Shape.describe(ts))") }
            elements += Count.product(ts)
        } else if model.hasT {
            throw GradError.invalid("inputs.t", "field required")
        }
        return (xs[0], xs[1], elements)
    }

    private func arguments() throws -> AnyModel.Arguments {
        guard case .object(let inputs)? = root["inputs"] else { throw GradError.invalid("inputs", "required: {\"x\": …\(model.hasT ? ", \"t\": …" : "")}") }
        for key in inputs.keys where !inputNames.contains(key) { throw GradError.invalid("inputs.\(key)", "extra field not permitted") }
        guard let x = inputs["x"] else { throw GradError.invalid("inputs.x", "field required") }
        let t = try inputs["t"].map { try TesseractArrays.decode($0, at: "inputs.t") }
        if model.hasT, t == nil { throw GradError.invalid("inputs.t", "field required") }
        return AnyModel.Arguments(x: try TesseractArrays.decode(x, at: "inputs.x"), t: t)
    }

    private func names(_ key: String, among allowed: [String]) throws -> [String] {
        guard case .array(let items)? = root[key], !items.isEmpty else { throw GradError.invalid(key, "required: a non-empty list from \(allowed)") }
        var out: [String] = []
        for (i, item) in items.enumerated() {
            guard case .string(let s) = item, allowed.contains(s) else { throw GradError.invalid("\(key).\(i)", "expected one of \(allowed)") }
            if !out.contains(s) { out.append(s) }
        }
        return out
    }

    private func abstractEval(into w: inout JSONWriter) throws {
        guard case .object(let inputs)? = root["inputs"], case .object(let x)? = inputs["x"],
            case .numbers(let s, let dims)? = x["shape"], s == [2], let b = Int(exactly: dims[0]), let d = Int(exactly: dims[1]), b >= 0, d >= 1
        else { throw GradError.invalid("inputs.x.shape", "expected [B, D]") }
        if let width = model.inputWidth, width != d { throw GradError.invalid("inputs.x.shape", "expected D = \(width), got \(d)") }
        // The same bounds as apply: a batch it would refuse is refused here too.
        try model.checkBatchShape(batch: b, d: d)
        guard (Count(b) * d).value <= TensorDecoder.maxElements else {
            throw GradError.invalid("inputs.x.shape", "\(Shape.describe([b, d])) holds more than the \(TensorDecoder.maxElements) elements this server reads")
        }
        w.beginObject()
        w.key("y")
        w.beginObject()
        w.key("shape")
        w.beginArray()
        w.number(b)
        w.number(model.outputWidth(d: d))
        w.endArray()
        w.key("dtype")
        w.string(model.dtype.rawValue)
        w.endObject()
        w.endObject()
    }

    /// `[B, R, C]` per-sample blocks (or `[B, R]` when `cols` is nil) to `[B, R, B, C]` (or `[B, R, B]`).
    static func blockDiagonal(_ t: AnyTensor, batch b: Int, rows r: Int, cols c: Int?) -> AnyTensor {
        func expand<S: BLASScalar>(_ p: Tensor<S>) -> Tensor<S> {
            let width = c ?? 1
            var out = [S](repeating: 0, count: b * r * b * width)
            p.scalars.withUnsafeBufferPointer { src in
                out.withUnsafeMutableBufferPointer { dst in
                    for s in 0..<b {
                        for i in 0..<r {
                            let from = (s * r + i) * width
                            let to = ((s * r + i) * b + s) * width
                            for j in 0..<width { dst[to + j] = src[from + j] }
                        }
                    }
                }
            }
            return Tensor(shape: c.map { [b, r, b, $0] } ?? [b, r, b], scalars: out)
        }
        switch t {
        case .float32(let f): return .float32(expand(f))
        case .float64(let d): return .float64(expand(d))
        }
    }
}

/// Tesseract's error shapes: a 422 as `{"detail": [{"type", "loc", "msg"}]}`; anything else as problem+json.
struct TesseractErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as GradError {
            let issues: [(place: Place, message: String)]
            switch error {
            case .invalid(let list): issues = list.map { ($0.place, $0.message) }
            case .outputTooLarge(let place, let elements, let limit):
                issues = [(place, "the answer would hold \(elements) numbers, above the server's limit of \(limit) (--max-output-elements)")]
            case .limitExceeded(let place, let limit, let message): issues = [(place, "\(message) (\(limit))")]
            case .deadlineExceeded, .cancelled: throw error
            }
            var w = JSONWriter()
            w.beginObject()
            w.key("detail")
            w.beginArray()
            for issue in issues {
                w.beginObject()
                w.key("type")
                w.string("value_error")
                w.key("loc")
                w.beginArray()
                w.string("body")
                for part in PlaceNames.tesseract(issue.place).split(separator: ".") { w.string(String(part)) }
                w.endArray()
                w.key("msg")
                w.string(issue.message)
                w.endObject()
            }
            w.endArray()
            w.endObject()
            return Response(
                status: .unprocessableContent, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: w.takeBytes())))
        } catch let e as JSONParseError {
            var w = JSONWriter()
            w.beginObject()
            w.key("detail")
            w.beginArray()
            w.beginObject()
            w.key("type")
            w.string("json_invalid")
            w.key("loc")
            w.beginArray()
            w.string("body")
            w.endArray()
            w.key("msg")
            w.string(e.description)
            w.endObject()
            w.endArray()
            w.endObject()
            return Response(
                status: .unprocessableContent, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: w.takeBytes())))
        }
    }
}
