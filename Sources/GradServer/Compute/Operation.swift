import GradCodec
import GradCore

/// The compute operations of API v1, each `POST /v1/<name>`.
enum Operation: String, CaseIterable, Sendable {
    case forward, vjp, jvp, jacobian, divergence

    /// Top-level fields each operation accepts.
    var fields: Set<String> {
        let common: Set<String> = ["model", "inputs", "output_encoding", "return_outputs"]
        switch self {
        case .forward: return common
        case .vjp: return common.union(["grad_outputs", "is_grads_batched", "wrt"])
        case .jvp: return common.union(["tangents"])
        case .jacobian: return common.union(["wrt", "mode"])
        case .divergence: return common.union(["method", "probes", "seed"])
        }
    }

    /// Object fields and their keys.
    var nestedFields: [String: Set<String>] {
        self == .jvp ? ["inputs": ["x", "t"], "tangents": ["x", "t"]] : ["inputs": ["x", "t"]]
    }
}

/// Decodes one compute request, checks the answer size, computes, and builds the answer.
/// Runs on a compute thread; knows nothing of HTTP beyond ``Problem`` for 404.
struct OperationRunner: Sendable {
    let registry: ModelRegistry
    let maxOutputElements: Int

    func run(_ op: Operation, _ doc: RequestDocument) throws -> (Answer, OutputEncoding) {
        try doc.checkKnown(op.fields, nested: op.nestedFields)
        let encoding = OutputEncoding(rawValue: try doc.choice("output_encoding", OutputEncoding.allCases.map(\.rawValue), default: "json"))!
        let returnOutputs = try doc.bool("return_outputs", default: true)
        let model = try resolveModel(doc)
        let args = AnyModel.Arguments(x: try doc.requiredTensor("inputs.x"), t: try doc.tensor("inputs.t"))
        if args.t != nil, !model.hasT { throw GradError.invalid("inputs.t", "the model has no t input (its inputs are [\"x\"])") }
        // Shapes are validated again by the core; here they only size the answer.
        let xs = args.x.shape
        guard xs.count == 2 else { throw GradError.invalid("inputs.x", "expected a [B, D] array, got shape \(Shape.describe(xs))") }
        let (b, d) = (xs[0], xs[1])
        let dOut = model.outputWidth(d: d)
        var answer = Answer()
        switch op {
        case .forward:
            try checkSize(b, dOut, path: "outputs")
            answer.add("outputs", tensor: try model.forward(args))
        case .vjp:
            let batched = try doc.bool("is_grads_batched", default: false)
            let wrt = Set(try doc.subset("wrt", model.hasT ? ["x", "t", "params"] : ["x", "params"], default: ["x"]).compactMap(GradTarget.init))
            let v = try doc.requiredTensor("grad_outputs")
            let k = batched ? (v.shape.first ?? 1) : 1
            var size = returnOutputs ? mul(b, dOut) : 0
            if wrt.contains(.x) { size += mul(k, b, d) }
            if wrt.contains(.t) { size += mul(k, b) }
            if wrt.contains(.params) { size += mul(k, model.parameterCount) }
            try check(size, path: "grads")
            let r = try model.vjp(args, gradOutputs: v, isGradsBatched: batched, wrt: wrt, returnOutputs: returnOutputs)
            answer.add("outputs", tensor: r.outputs)
            answer.add("grads", "x", tensor: r.x)
            answer.add("grads", "t", tensor: r.t)
            for (name, g) in r.params { answer.add("grads", "params", name, tensor: g) }
            if wrt.contains(.params), r.params.isEmpty { answer.addEmptyObject("grads", "params") }
        case .jvp:
            let tx = try doc.tensor("tangents.x")
            let tt = try doc.tensor("tangents.t")
            if !doc.has("tangents"), !doc.binary.keys.contains(where: { $0.hasPrefix("tangents.") }) {
                throw GradError.invalid("tangents", "required: {\"x\": [B, D] or [K, B, D], \"t\": …}; a missing entry counts as zero")
            }
            let k = max(tx.map { $0.shape.count == 3 ? $0.shape[0] : 1 } ?? 1, tt.map { $0.shape.count == 2 ? $0.shape[0] : 1 } ?? 1)
            try check((returnOutputs ? mul(b, dOut) : 0) + mul(k, b, dOut), path: "jvp")
            let r = try model.jvp(args, tangentX: tx, tangentT: tt, returnOutputs: returnOutputs)
            answer.add("outputs", tensor: r.outputs)
            answer.add("jvp", tensor: r.jvp)
        case .jacobian:
            let wrt = Set(try doc.subset("wrt", model.hasT ? ["x", "t"] : ["x"], default: ["x"]).compactMap(GradTarget.init))
            let mode = JacobianMode(rawValue: try doc.choice("mode", JacobianMode.allCases.map(\.rawValue), default: "auto"))!
            var size = returnOutputs ? mul(b, dOut) : 0
            if wrt.contains(.x) { size += mul(b, dOut, d) }
            if wrt.contains(.t) { size += mul(b, dOut) }
            try check(size, path: "jacobian")
            let r = try model.jacobian(args, wrt: wrt, mode: mode)
            if returnOutputs { answer.add("outputs", tensor: r.outputs) }
            answer.add("jacobian", "x", tensor: r.x)
            answer.add("jacobian", "t", tensor: r.t)
            answer.add("mode", string: r.mode.rawValue)
        case .divergence:
            let method = try doc.choice("method", ["exact", "hutchinson"], default: "exact")
            let probes = try doc.int("probes", default: 16, range: 1...100_000)
            let seed = try doc.int("seed", default: 0, range: 0...Int(Int64.max))
            if method == "exact", doc.object["probes"] != nil || doc.object["seed"] != nil {
                throw GradError.invalid(doc.object["probes"] != nil ? "probes" : "seed", "only used with \"method\": \"hutchinson\"")
            }
            if returnOutputs, doc.object["return_outputs"] != nil { try check(mul(b, dOut) + b, path: "outputs") }
            // The exact trace never forms more than the Jacobian the limit allows.
            if method == "exact" { try check(mul(b, dOut, d), path: "divergence") } else { try check(mul(probes, b, max(d, dOut)), path: "probes") }
            let div = try model.divergence(args, method: method == "exact" ? .exact : .hutchinson(probes: probes, seed: UInt64(seed)))
            if returnOutputs, doc.object["return_outputs"] != nil { answer.add("outputs", tensor: try model.forward(args)) }
            answer.add("divergence", tensor: div)
            answer.add("method", string: method)
        }
        return (answer, encoding)
    }

    func resolveModel(_ doc: RequestDocument) throws -> AnyModel {
        switch doc.value("model") {
        case .string(let id)?:
            guard let entry = registry.get(id) else {
                throw Problem(
                    .notFound, title: "Unknown model", detail: "no registered model has id \(id)",
                    errors: [FieldIssue(path: "model", message: "unknown model id \"\(id)\"; register it with POST /v1/models")])
            }
            return entry.model
        case let v?:
            var weights: [String: AnyTensor] = [:]
            for (name, t) in doc.binary where name.hasPrefix("model.weights.") { weights[String(name.dropFirst("model.weights.".count))] = t }
            return try ModelDecoder.decode(v, at: "model", binaryWeights: weights)
        case nil:
            throw GradError.invalid("model", "required: a model object or the id of a registered model")
        }
    }

    /// Products that saturate instead of overflowing (sizes only compare against the limit).
    private func mul(_ xs: Int...) -> Int {
        var p = 1
        for x in xs {
            let (r, o) = p.multipliedReportingOverflow(by: max(0, x))
            if o { return Int.max / 4 }
            p = r
        }
        return p
    }

    private func checkSize(_ b: Int, _ w: Int, path: String) throws { try check(mul(b, w), path: path) }

    private func check(_ elements: Int, path: String) throws {
        if elements > maxOutputElements { throw GradError.outputTooLarge(path: path, elements: elements, limit: maxOutputElements) }
    }
}
