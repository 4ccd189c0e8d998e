import Foundation
import GradCodec
import GradCore
import Hummingbird
import Synchronization

/// `POST /v1/benchmark`: the same timing reports as `gradserve bench`, for a posted workload,
/// bounded in run time by `--benchmark-max-seconds`.
struct BenchmarkController: Sendable {
    let pipeline: RequestPipeline
    let runner: OperationRunner
    let machine = MachineCache()

    func addRoutes(to group: RouterGroup<GradRequestContext>) {
        group.post("benchmark") { request, context in try await handle(request, context) }
    }

    func handle(_ request: Request, _ context: GradRequestContext) async throws -> Response {
        let runner = self.runner
        let maxSeconds = pipeline.configuration.benchmarkMaxSeconds
        let machineBox = machine
        let report = try await pipeline.run(request, context, extraSeconds: maxSeconds) { job -> BenchmarkReport in
            let info = machineBox.get()
            let doc = try job.document()
            let started = ContinuousClock.now
            // Each workload gets what is left of the budget; at least 3 iterations always run.
            func remaining() -> Double { max(0.05, maxSeconds - Stopwatch.seconds(ContinuousClock.now - started)) }
            let iterations = try doc.int("iterations", default: 20, range: 1...100_000)
            if doc.object["workload"] != nil {
                try doc.checkKnown(["workload", "in", "out", "batch", "iterations"])
                _ = try doc.choice("workload", ["linear"], default: "linear")
                let inF = try doc.int("in", default: 1000, range: 1...8192)
                let outF = try doc.int("out", default: 1000, range: 1...8192)
                let batch = try doc.int("batch", default: 1000, range: 1...8192)
                // Weight, input and output of one nn.Linear; FLOPs of one iteration (the run time is
                // bounded by --benchmark-max-seconds, not by the iteration count).
                let bytes = (Count(outF) * inF + Count(batch) * inF + Count(batch) * outF) * 8
                try job.admit(
                    ResourcePlan(outputElements: .zero, peakBytes: bytes, flops: Count(batch) * inF * outF * 2), path: "batch",
                    answerBytesPerNumber: 0)
                let r = ModelBenchmark.linear(in: inF, out: outF, batch: batch, iterations: iterations, maxSeconds: remaining(), peakGFLOPs: info.peakGFLOPs)
                return BenchmarkReport(machine: info, results: [r])
            }
            try doc.checkKnown(["model", "operation", "batch", "methods", "iterations", "d"])
            let model = try runner.resolveModel(doc)
            let op = try doc.choice("operation", ["forward", "vjp", "jvp", "jacobian", "divergence"], default: "jacobian")
            let batch = try doc.int("batch", default: 3, range: 1...4096)
            let given = doc.object["d"] == nil ? nil : try doc.int("d", default: 1, range: 1...65536)
            guard let d = model.inputWidth ?? given else {
                throw GradError.invalid("d", "required for a model without linear layers (the feature count of x)")
            }
            if let given, given != d { throw GradError.invalid("d", "the model takes x with \(d) features, not \(given)") }
            guard let known = ModelBenchmark.methods[op] else { throw GradError.invalid("operation", "no benchmark methods for \(op)") }
            let chosen = try doc.subset("methods", known, default: known)
            let methods = known.filter { chosen.contains($0) }
            try model.checkBatchShape(batch: batch, d: d)
            // Every timed method holds one answer at a time; FLOPs are those of one iteration
            // (the run time is bounded by --benchmark-max-seconds).
            let planned: PlannedOperation =
                switch op {
                case "forward": .forward
                case "vjp": .vjp(k: 1, wrt: [.x], returnOutputs: true)
                case "jvp": .jvp(k: 1, returnOutputs: true)
                case "divergence": .divergence(.hutchinson(probes: 16, seed: 0))
                default: .jacobian(wrt: [.x], mode: .auto)
                }
            var plan = model.plan(planned, batch: batch, d: d)
            if op == "divergence" { plan.peakBytes = Count.max(plan.peakBytes, model.plan(.divergence(.exact), batch: batch, d: d).peakBytes) }
            if op == "jacobian" || op == "divergence" {
                plan.peakBytes = Count.max(plan.peakBytes, model.plan(.jacobian(wrt: [.x], mode: .forward), batch: batch, d: d).peakBytes)
                plan.peakBytes = Count.max(plan.peakBytes, model.plan(.jacobian(wrt: [.x], mode: .reverse), batch: batch, d: d).peakBytes)
            }
            try job.admit(plan, path: "batch", answerBytesPerNumber: 0)
            var results: [TimingResult] = []
            for method in methods {
                results += try ModelBenchmark.run(
                    model, operation: op, methods: [method], batch: batch, d: d, iterations: iterations, maxSeconds: remaining() / 2,
                    peakGFLOPs: info.peakGFLOPs)
            }
            return BenchmarkReport(machine: info, results: results)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(report))))
    }
}

/// The machine description, measured (GEMM peak) once on first use.
final class MachineCache: Sendable {
    private let value = Mutex<MachineInfo?>(nil)

    func get() -> MachineInfo {
        value.withLock { m in
            if let m { return m }
            let fresh = MachineInfo.current()
            m = fresh
            return fresh
        }
    }
}
