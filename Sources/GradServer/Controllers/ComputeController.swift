import GradCodec
import GradCore
import Hummingbird

/// `POST /v1/{forward,vjp,jvp,jacobian,divergence}`: each route declares its operation; the
/// request pipeline admits, reads and plans it, and the runner computes it on a compute thread.
struct ComputeController: Sendable {
    let pipeline: RequestPipeline
    let runner: OperationRunner

    var endpoints: RouteCollection<GradRequestContext> {
        let routes = RouteCollection(context: GradRequestContext.self)
        for op in Operation.allCases {
            routes.post(RouterPath(op.rawValue)) { request, context in try await handle(op, request, context) }
        }
        return routes
    }

    func handle(_ op: Operation, _ request: Request, _ context: GradRequestContext) async throws -> Response {
        let runner = self.runner
        let clock = ContinuousClock()
        let (bytes, type, phases, encodeStart, done) = try await pipeline.run(request, context) { job in
            let t0 = clock.now
            let doc = try job.document()
            let t1 = clock.now
            let (answer, encoding) = try runner.run(op, doc, job)
            let t2 = clock.now
            var timing: [(String, Double)] = []
            let (bytes, type) = answer.encode(encoding) {
                // JSON tensors are decoded inside the run, after the plan: their time is decode's.
                let tensors = doc.tensorDecoding.seconds
                timing = [
                    ("read", job.readSeconds), ("queue", job.queueSeconds), ("decode", Stopwatch.seconds(t1 - t0) + tensors),
                    ("compute", Stopwatch.seconds(t2 - t1) - tensors), ("encode", Stopwatch.seconds(clock.now - t2)),
                ]
                var trailer = Answer()
                for (name, s) in timing { trailer.add("timing", "\(name)_ms", number: (s * 1e6).rounded() / 1000) }
                return trailer
            }
            return (bytes, type, timing, t2, clock.now)
        }
        // Known only now, so in the header and not in the body: `encode` up to the last byte of the
        // answer's buffer (a safetensors body's `timing` sits in its header, before the tensor
        // bytes are copied in), and `return`, from there until this handler resumed (the hand-off
        // from the compute thread back).
        let encode = Stopwatch.seconds(done - encodeStart)
        let phasesWithReturn = phases.map { $0.0 == "encode" ? ("encode", encode) : $0 } + [("return", Stopwatch.seconds(clock.now - done))]
        var headers = HTTPFields()
        headers[.contentType] = type
        headers[.serverTiming] = phasesWithReturn.map { "\($0.0);dur=\(String(format: "%.3f", $0.1 * 1000))" }.joined(separator: ", ")
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: bytes))
    }
}
