import GradCodec
import GradCore
import Hummingbird

/// The UM-Bridge routes on a decoded body.
struct UMBridgeEndpoints {
    let model: AnyModel
    let root: JSONObject
    let job: Job

    func run(_ route: UMBridgeRoute, into w: inout JSONWriter) throws {
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

    private func runChecked(_ route: UMBridgeRoute, into w: inout JSONWriter) throws {
        switch root["name"] {
        case nil, .string("forward")?: break
        case .string(let name)?: throw UMBridgeError(type: "ModelNotFound", message: "Model \(name) not found! The following are available: [forward]")
        default: throw UMBridgeError(type: "InvalidInput", message: "name must be a string")
        }
        if route == .modelInfo {
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
        case .inputSizes:
            w.key("inputSizes")
            w.beginArray()
            for n in inputSizes { w.number(n) }
            w.endArray()
        case .outputSizes:
            w.key("outputSizes")
            w.beginArray()
            w.number(outputSize.value)
            w.endArray()
        case .evaluate:
            try admit(.forward)
            let args = try arguments(b: b, d: d, sizes: inputSizes)
            w.key("output")
            w.beginArray()
            writeFlat(try model.forward(args), into: &w)
            w.endArray()
        case .gradient:
            let inWrt = try wrt("inWrt", count: inputSizes.count)
            _ = try wrt("outWrt", count: 1)
            try admit(.vjp(k: 1, wrt: [inWrt == 0 ? .x : .t], returnOutputs: false))
            let args = try arguments(b: b, d: d, sizes: inputSizes)
            let sens = try vector("sens", length: outputSize.value, shape: [b, dOut])
            let r = try model.vjp(args, gradOutputs: sens, isGradsBatched: false, wrt: [inWrt == 0 ? .x : .t], returnOutputs: false)
            w.key("output")
            writeFlat((inWrt == 0 ? r.x : r.t)!, into: &w)
        case .applyJacobian:
            let inWrt = try wrt("inWrt", count: inputSizes.count)
            _ = try wrt("outWrt", count: 1)
            try admit(.jvp(k: 1, returnOutputs: false))
            let args = try arguments(b: b, d: d, sizes: inputSizes)
            let vec = try vector("vec", length: inputSizes[inWrt], shape: inWrt == 0 ? [b, d] : [b])
            let r = try model.jvp(args, tangentX: inWrt == 0 ? vec : nil, tangentT: inWrt == 1 ? vec : nil, returnOutputs: false)
            w.key("output")
            writeFlat(r.jvp, into: &w)
        case .applyHessian, .modelInfo:
            throw UMBridgeError(type: "UnsupportedFeature", message: "\(route.rawValue) is not supported by this model")
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
