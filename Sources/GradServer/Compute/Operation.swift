import GradCodec
import GradCore

/// The compute operations of API v1, each `POST /v1/<name>`.
enum Operation: String, CaseIterable, Sendable {
    case forward, vjp, jvp, jacobian, divergence, integrate, logprob

    /// Top-level fields each operation accepts.
    var fields: Set<String> {
        let common: Set<String> = ["model", "inputs", "output_encoding", "return_outputs"]
        let solve: Set<String> = [
            "model", "inputs", "output_encoding", "time_grid", "method", "step_size", "atol", "rtol", "max_steps", "return_intermediates",
        ]
        switch self {
        case .forward: return common
        case .vjp: return common.union(["grad_outputs", "is_grads_batched", "wrt"])
        case .jvp: return common.union(["tangents"])
        case .jacobian: return common.union(["wrt", "mode"])
        case .divergence: return common.union(["method", "probes", "seed"])
        case .integrate: return solve
        case .logprob: return solve.union(["divergence", "probes", "seed", "noise", "base"])
        }
    }

    /// Whether a small request of this operation may be computed on its event loop
    /// (``RequestPipeline``'s `inline`): the single-sweep transforms a notebook calls in a loop.
    /// Divergences and solves always go to a compute thread.
    var mayRunInline: Bool { [.forward, .vjp, .jvp, .jacobian].contains(self) }

    /// Object fields and their keys.
    var nestedFields: [String: Set<String>] {
        self == .jvp ? ["inputs": ["x", "t"], "tangents": ["x", "t"]] : ["inputs": ["x", "t"]]
    }
}

/// Decodes one compute request, plans it (output, memory and FLOPs against the limits, memory
/// reserved) before decoding its tensors, computes, and builds the answer. Runs on a compute
/// thread; knows nothing of HTTP beyond ``Problem`` for 404.
struct OperationRunner: Sendable {
    let registry: ModelRegistry
    let maxLayers: Int

    /// What a run gives: an answer to encode, or a Jacobian to stream.
    enum Outcome {
        case answer(Answer, OutputEncoding)
        case stream(JacobianStream)
    }

    /// Runs `op`; a large safetensors Jacobian comes back as a ``JacobianStream`` (planned in full
    /// and admitted for one block at a time, its inputs decoded, nothing computed).
    func run(_ op: Operation, _ doc: RequestDocument, _ job: Job) throws -> Outcome {
        try doc.checkKnown(op.fields, nested: op.nestedFields)
        let encoding = OutputEncoding(rawValue: try doc.choice("output_encoding", OutputEncoding.allCases.map(\.rawValue), default: "json"))!
        let returnOutputs = try doc.bool("return_outputs", default: true)
        // A model sent in the request is decoded and checked on a compute thread, never on an event
        // loop; a registered one's plans are remembered (InlineHistory) for the operations that may run there.
        if case .string(let id)? = doc.value("model") {
            if op.mayRunInline { job.modelReference = id }
        } else if job.isInline {
            throw Job.Handoff()
        }
        let model = try resolveModel(doc)
        // Shapes first, from the tensors' headers: nothing large is decoded before the plan.
        guard let xs = try doc.shape("inputs.x") else { throw GradError.invalid("inputs.x", "required") }
        guard xs.count == 2 else { throw GradError.invalid("inputs.x", "expected a [B, D] array, got shape \(Shape.describe(xs))") }
        let (b, d) = (xs[0], xs[1])
        try model.checkBatchShape(batch: b, d: d)
        let ts = try doc.shape("inputs.t")
        if ts != nil, op == .integrate || op == .logprob {
            throw GradError.invalid("inputs.t", "not used by a solve: t is the integration time, set by time_grid")
        }
        if ts != nil, !model.hasT { throw GradError.invalid("inputs.t", "the model has no t input (its inputs are [\"x\"])") }
        // Checked here for every operation, and not only by the model's own validation: a streamed
        // Jacobian validates one block of rows at a time and would slice a shorter t out of bounds.
        if let ts, ts != [b] {
            throw GradError.invalid("inputs.t", "expected shape [\(b)] (one t per sample), got \(Shape.describe(ts))")
        }
        let answerBytes = Self.bytesPerNumber(encoding, model.dtype)
        func elements(_ shape: [Int]?) -> Count { shape.map { Count.product($0) } ?? .zero }
        var inputElements = elements(xs) + elements(ts)
        func admit(_ planned: PlannedOperation, path: String) throws {
            try job.admit(model.plan(planned, batch: b, d: d), path: path, inputElements: inputElements, answerBytesPerNumber: answerBytes)
        }
        func arguments() throws -> AnyModel.Arguments {
            AnyModel.Arguments(x: try doc.requiredTensor("inputs.x"), t: try doc.tensor("inputs.t"))
        }
        var answer = Answer()
        let byteCount = model.dtype.byteCount
        let dOut = model.outputWidth(d: d)
        /// Runs `compute` with the answer's tensors (`elements` in all) written into its body when
        /// that is safetensors. Not with row chunks (`--threads-per-request` above 1): they never
        /// use an arena, which would then only hold memory the plan did not count.
        func intoBody<R>(elements: Int, _ compute: () throws -> R) throws -> R {
            guard encoding == .safetensors, Parallel.threads <= 1 else { return try compute() }
            answer.arena = AnswerArena.make(bytes: elements * byteCount)
            return try ResultArena.run(answer.arena?.results) { try compute() }
        }
        switch op {
        case .forward:
            try admit(.forward, path: "outputs")
            let args = try arguments()
            answer.add("outputs", tensor: try intoBody(elements: b * dOut) { try model.forward(args) })
        case .vjp:
            let batched = try doc.bool("is_grads_batched", default: false)
            let wrt = Set(try doc.subset("wrt", model.hasT ? ["x", "t", "params"] : ["x", "params"], default: ["x"]).compactMap(GradTarget.init))
            guard let vs = try doc.shape("grad_outputs") else { throw GradError.invalid("grad_outputs", "required") }
            inputElements += elements(vs)
            try admit(.vjp(k: batched ? (vs.first ?? 1) : 1, wrt: wrt, returnOutputs: returnOutputs), path: "grads")
            let args = try arguments()
            let v = try doc.requiredTensor("grad_outputs")
            // The tensors the sweep produces in answer order: outputs, x̄, t̄ (K of each when K-batched).
            let k = batched ? (vs.first ?? 1) : 1
            let fast = (returnOutputs ? b * dOut : 0) + (wrt.contains(.x) ? k * b * d : 0) + (wrt.contains(.t) && model.hasT ? k * b : 0)
            let r = try intoBody(elements: fast) { try model.vjp(args, gradOutputs: v, isGradsBatched: batched, wrt: wrt, returnOutputs: returnOutputs) }
            answer.add("outputs", tensor: r.outputs)
            answer.add("grads", "x", tensor: r.x)
            answer.add("grads", "t", tensor: r.t)
            for (name, g) in r.params { answer.add("grads", "params", name, tensor: g) }
            if wrt.contains(.params), r.params.isEmpty { answer.addEmptyObject("grads", "params") }
        case .jvp:
            if !doc.has("tangents"), !doc.binary.keys.contains(where: { $0.hasPrefix("tangents.") }) {
                throw GradError.invalid("tangents", "required: {\"x\": [B, D] or [K, B, D], \"t\": …}; a missing entry counts as zero")
            }
            let txs = try doc.shape("tangents.x")
            let tts = try doc.shape("tangents.t")
            inputElements += elements(txs) + elements(tts)
            let k = max(txs.map { $0.count == 3 ? $0[0] : 1 } ?? 1, tts.map { $0.count == 2 ? $0[0] : 1 } ?? 1)
            try admit(.jvp(k: k, returnOutputs: returnOutputs), path: "jvp")
            let args = try arguments()
            let r = try model.jvp(args, tangentX: try doc.tensor("tangents.x"), tangentT: try doc.tensor("tangents.t"), returnOutputs: returnOutputs)
            answer.add("outputs", tensor: r.outputs)
            answer.add("jvp", tensor: r.jvp)
        case .jacobian:
            let wrt = Set(try doc.subset("wrt", model.hasT ? ["x", "t"] : ["x"], default: ["x"]).compactMap(GradTarget.init))
            let mode = JacobianMode(rawValue: try doc.choice("mode", JacobianMode.allCases.map(\.rawValue), default: "auto"))!
            if JacobianStream.applies(encoding: encoding, wrt: wrt, batch: b, d: d, dOut: dOut, dtype: model.dtype) {
                // The whole answer against the output and FLOP limits; memory for one block at a
                // time (its working set, the block being written, the small tensors held to the end).
                let whole = model.plan(.jacobian(wrt: wrt, mode: mode, returnOutputs: returnOutputs), batch: b, d: d)
                let rows = JacobianStream.rowsPerBlock(d: d, dOut: dOut, dtype: model.dtype)
                let block = model.plan(.jacobian(wrt: wrt, mode: mode, returnOutputs: true), batch: rows, d: d)
                let blockAnswer = Count(rows) * dOut * d * model.dtype.byteCount
                let small = Count(2 * b) * dOut * model.dtype.byteCount
                var streamed = whole
                streamed.peakBytes = block.peakBytes + blockAnswer * 2 + small
                try job.admit(streamed, path: "jacobian", inputElements: inputElements, answerBytesPerNumber: 0)
                let resolved = mode == .auto ? model.resolve(.auto, batch: b, d: d, wantX: true, wantT: wrt.contains(.t)) : mode
                return .stream(JacobianStream(model: model, args: try arguments(), wrt: wrt, mode: resolved, returnOutputs: returnOutputs, d: d, dOut: dOut))
            }
            try admit(.jacobian(wrt: wrt, mode: mode, returnOutputs: returnOutputs), path: "jacobian")
            let args = try arguments()
            // A reverse sweep produces the outputs, then x̄ and t̄: the answer, in its order, when
            // the outputs are part of it (a forward sweep builds J in arrays of its own).
            let r: AnyModel.Jacobian
            if returnOutputs, model.resolve(mode, batch: b, d: d, wantX: wrt.contains(.x), wantT: wrt.contains(.t)) == .reverse {
                let fast = b * dOut + (wrt.contains(.x) ? b * dOut * d : 0) + (wrt.contains(.t) ? b * dOut : 0)
                r = try intoBody(elements: fast) { try model.jacobian(args, wrt: wrt, mode: mode) }
            } else {
                r = try model.jacobian(args, wrt: wrt, mode: mode)
            }
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
            let withOutputs = returnOutputs && doc.object["return_outputs"] != nil
            let divMethod: DivergenceMethod = method == "exact" ? .exact : .hutchinson(probes: probes, seed: UInt64(seed))
            try admit(.divergence(divMethod, returnOutputs: withOutputs), path: method == "exact" ? "divergence" : "probes")
            let args = try arguments()
            let div = try model.divergence(args, method: divMethod)
            if withOutputs { answer.add("outputs", tensor: try model.forward(args)) }
            answer.add("divergence", tensor: div)
            answer.add("method", string: method)
        case .integrate, .logprob:
            try solve(op, doc, model, batch: b, d: d, inputElements: inputElements, answerBytes: answerBytes, job, into: &answer)
        }
        return .answer(answer, encoding)
    }

    /// `/v1/integrate` and `/v1/logprob`: the solver settings, the plan, the solve, the answer.
    private func solve(
        _ op: Operation, _ doc: RequestDocument, _ model: AnyModel, batch b: Int, d: Int, inputElements: Count, answerBytes: Int, _ job: Job,
        into answer: inout Answer
    ) throws {
        let grid = try doc.numberList("time_grid") ?? (op == .integrate ? [0, 1] : [1, 0])
        let method = ODEMethod(rawValue: try doc.choice("method", ODEMethod.allCases.map(\.rawValue), default: "dopri5")) ?? .dopri5
        let options = ODEOptions(
            method: method, stepSize: try doc.number("step_size"), atol: try doc.number("atol") ?? 1e-5, rtol: try doc.number("rtol") ?? 1e-5,
            maxSteps: try doc.int("max_steps", default: 10_000, range: 1...1_000_000))
        let intermediates = try doc.bool("return_intermediates", default: false)
        try options.validate(timeGrid: grid)
        var divergence: LogDensityDivergence? = nil
        if op == .logprob {
            _ = try doc.choice("base", ["standard_normal"], default: "standard_normal")
            let kind = try doc.choice("divergence", ["exact", "hutchinson"], default: "exact")
            let probes = try doc.int("probes", default: 1, range: 1...4096)
            let seed = try doc.int("seed", default: 0, range: 0...Int(Int64.max))
            let noise = ProbeNoise(rawValue: try doc.choice("noise", ProbeNoise.allCases.map(\.rawValue), default: "rademacher")) ?? .rademacher
            if kind == "exact", let key = ["probes", "seed", "noise"].first(where: { doc.object[$0] != nil }) {
                throw GradError.invalid(key, "only used with \"divergence\": \"hutchinson\"")
            }
            divergence = kind == "exact" ? .exact : .hutchinson(probes: probes, seed: UInt64(seed), noise: noise)
        }
        try job.admit(
            model.plan(flow: divergence, batch: b, d: d, timeGrid: grid, options: options, returnIntermediates: intermediates),
            path: intermediates ? "trajectory" : op == .integrate ? "x" : "logprob", inputElements: inputElements, answerBytesPerNumber: answerBytes)
        let x = try doc.requiredTensor("inputs.x")
        let stats: ODEStats
        if let divergence {
            let r = try model.logprob(x, timeGrid: grid, options: options, divergence: divergence, returnIntermediates: intermediates)
            answer.add("logprob", tensor: r.logprob)
            answer.add("x0", tensor: r.x0)
            answer.add("log_det", tensor: r.logDet)
            answer.add("trajectory", tensor: r.trajectory)
            stats = r.stats
        } else {
            let r = try model.integrate(x, timeGrid: grid, options: options, returnIntermediates: intermediates)
            answer.add("x", tensor: r.x)
            answer.add("trajectory", tensor: r.trajectory)
            stats = r.stats
        }
        answer.add("nfe", number: Double(stats.nfe))
        answer.add("steps", "accepted", number: Double(stats.accepted))
        answer.add("steps", "rejected", number: Double(stats.rejected))
        answer.add("method", string: method.rawValue)
    }

    /// Bytes one number takes in an answer: JSON text (shortest round-trip form, sign, exponent,
    /// comma), base64 text of the binary value, or the binary value itself.
    static func bytesPerNumber(_ encoding: OutputEncoding, _ dtype: DType) -> Int {
        switch encoding {
        case .json: 25
        case .base64: dtype.byteCount * 4 / 3 + 1
        case .safetensors: dtype.byteCount
        }
    }

    func resolveModel(_ doc: RequestDocument) throws -> AnyModel {
        switch doc.value("model") {
        case .string(let id)?:
            guard let entry = registry.get(id) else {
                throw Problem(
                    .notFound, title: "Unknown model", detail: "no registered model has id \(id)",
                    errors: [(path: "model", message: "unknown model id \"\(id)\"; register it with POST /v1/models")])
            }
            return entry.model
        case let v?:
            var weights: [String: AnyTensor] = [:]
            for (name, t) in doc.binary where name.hasPrefix("model.weights.") { weights[String(name.dropFirst("model.weights.".count))] = t }
            return try ModelDecoder.decode(v, at: "model", binaryWeights: weights, maxLayers: maxLayers)
        case nil:
            throw GradError.invalid("model", "required: a model object or the id of a registered model")
        }
    }
}
