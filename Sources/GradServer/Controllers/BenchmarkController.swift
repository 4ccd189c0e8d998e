import Foundation
import GradCodec
import GradCore
import Hummingbird
import Synchronization

/// `POST /v1/benchmark`: the same timing reports as `gradserve bench`, for a posted workload,
/// bounded in run time by `--benchmark-max-seconds`.
struct BenchmarkController<Context: RequestContext>: Sendable {
    let pool: ComputePool
    let runner: OperationRunner
    let configuration: ServerConfiguration
    let machine = MachineCache()

    func addRoutes(to group: RouterGroup<Context>) {
        group.post("benchmark") { request, _ in try await handle(request) }
    }

    func handle(_ request: Request) async throws -> Response {
        let body = try await BodyReader.collect(request, limit: configuration.maxBodyBytes)
        let contentType = request.headers[.contentType]
        let runner = self.runner
        let maxSeconds = configuration.benchmarkMaxSeconds
        let deadline = configuration.deadline(extra: maxSeconds)
        let machineBox = machine
        let report = try await pool.run(deadline: deadline) { _ -> BenchmarkReport in
            let info = machineBox.get()
            let doc = try RequestDocument.parse(body, contentType: contentType)
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
            let methods = Array(try doc.subset("methods", ModelBenchmark.methods[op]!, default: ModelBenchmark.methods[op]!))
                .sorted { ModelBenchmark.methods[op]!.firstIndex(of: $0)! < ModelBenchmark.methods[op]!.firstIndex(of: $1)! }
            let outElements = batch * model.outputWidth(d: d) * (op == "jacobian" || op == "divergence" ? d : 1)
            if outElements > runner.maxOutputElements {
                throw GradError.outputTooLarge(path: "batch", elements: outElements, limit: runner.maxOutputElements)
            }
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
