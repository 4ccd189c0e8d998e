import GradCodec
import GradCore
import Hummingbird

/// The five compute endpoints of the Tesseract protocol, on a decoded body.
struct TesseractEndpoints {
    let model: AnyModel
    let root: JSONObject
    let format: TesseractArrays.Format
    let job: Job

    func run(_ endpoint: TesseractEndpoint, into w: inout JSONWriter) throws {
        for key in root.keys where !endpoint.fields.contains(key) { throw GradError.invalid(key, "extra field not permitted") }
        if endpoint == .abstractEval { return try abstractEval(into: &w) }
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
        case .apply:
            try admit(.forward, path: "y")
            let args = try arguments()
            w.key("y")
            TesseractArrays.write(try model.forward(args), format: format, into: &w)
        case .vectorJacobianProduct:
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
            for (name, gradient) in [("x", r.x), ("t", r.t)] where wrt.contains(name) {
                guard let gradient else { continue }
                w.key(name)
                TesseractArrays.write(gradient, format: format, into: &w)
            }
        case .jacobianVectorProduct:
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
        case .jacobian:
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
            for (name, perSample, cols) in [("x", r.x, Optional(d)), ("t", r.t, nil)] where wrt.contains(name) {
                guard let perSample else { continue }
                w.key(name)
                TesseractArrays.write(Self.blockDiagonal(perSample, batch: b, rows: dOut, cols: cols), format: format, into: &w)
            }
            w.endObject()
        case .abstractEval: break
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
            p.withUnsafeBufferPointer { src in
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
