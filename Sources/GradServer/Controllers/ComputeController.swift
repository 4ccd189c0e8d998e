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
        let (bytes, type, serverTiming) = try await pipeline.run(request, context) { job in
            let clock = ContinuousClock()
            let t0 = clock.now
            let doc = try job.document()
            let t1 = clock.now
            let (answer, encoding) = try runner.run(op, doc, job)
            let t2 = clock.now
            var timing: [(String, Double)] = []
            let (bytes, type) = answer.encode(encoding) {
                timing = [
                    ("queue", job.queueSeconds), ("decode", Stopwatch.seconds(t1 - t0)), ("compute", Stopwatch.seconds(t2 - t1)),
                    ("encode", Stopwatch.seconds(clock.now - t2)),
                ]
                var trailer = Answer()
                for (name, s) in timing { trailer.add("timing", "\(name)_ms", number: (s * 1e6).rounded() / 1000) }
                return trailer
            }
            return (bytes, type, timing.map { "\($0.0);dur=\(String(format: "%.3f", $0.1 * 1000))" }.joined(separator: ", "))
        }
        var headers = HTTPFields()
        headers[.contentType] = type
        headers[.serverTiming] = serverTiming
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: bytes))
    }
}
