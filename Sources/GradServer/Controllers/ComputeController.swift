import GradCodec
import GradCore
import Hummingbird
import Prometheus

/// `POST /v1/{forward,vjp,jvp,jacobian,divergence}`: each route declares its operation; the
/// request pipeline admits, reads and plans it, and the runner computes it on a compute thread.
struct ComputeController: Sendable {
    let pipeline: RequestPipeline
    let runner: OperationRunner
    let metrics: PrometheusCollectorRegistry

    /// `gradserve_answers_total{encoding, body}`: answers by `output_encoding` and how their body
    /// was made: `in_place` (a safetensors answer computed into its body, ``AnswerArena``),
    /// `copied` (encoded into a new buffer) or `streamed` (a Jacobian written block by block).
    private func count(_ encoding: OutputEncoding, body: String) {
        metrics.makeCounter(descriptor: Self.answers, labels: [("encoding", encoding.rawValue), ("body", body)]).increment()
    }

    static var answers: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "gradserve", metricName: "answers", unitName: "total", helpText: "Compute answers by encoding and how their body was made")
    }

    var endpoints: RouteCollection<GradRequestContext> {
        let routes = RouteCollection(context: GradRequestContext.self)
        for op in Operation.allCases {
            routes.post(RouterPath(op.rawValue)) { request, context in try await handle(op, request, context) }
        }
        return routes
    }

    /// What the compute thread hands back: an encoded answer, or the first part of a streamed one.
    private enum Reply: Sendable {
        case whole(body: ByteBuffer, contentType: String, phases: [(String, Double)], encodeStart: ContinuousClock.Instant, done: ContinuousClock.Instant)
        case stream(
            JacobianStream, ComputeSession, header: ByteBuffer, first: ByteBuffer, length: Int, phases: [(String, Double)], done: ContinuousClock.Instant)
    }

    func handle(_ op: Operation, _ request: Request, _ context: GradRequestContext) async throws -> Response {
        let runner = self.runner
        let clock = ContinuousClock()
        let reply = try await pipeline.run(request, context, inline: op.mayRunInline) { job, session -> Reply in
            let t0 = clock.now
            let doc = try job.document()
            let t1 = clock.now
            let outcome = try runner.run(op, doc, job)
            // JSON tensors are decoded inside the run, after the plan: their time is decode's.
            func phases(computeEnd t2: ContinuousClock.Instant, encode: Double) -> [(String, Double)] {
                let tensors = doc.tensorDecoding.seconds
                return [
                    ("read", job.readSeconds), ("queue", job.queueSeconds), ("decode", Stopwatch.seconds(t1 - t0) + tensors),
                    ("compute", Stopwatch.seconds(t2 - t1) - tensors), ("encode", encode),
                ]
            }
            func trailer(_ timing: [(String, Double)]) -> Answer {
                var trailer = Answer()
                for (name, s) in timing { trailer.add("timing", "\(name)_ms", number: (s * 1e6).rounded() / 1000) }
                return trailer
            }
            switch outcome {
            case .answer(let answer, let encoding):
                session.end()  // one job: the place goes back when it ends
                let t2 = clock.now
                var timing: [(String, Double)] = []
                let (bytes, type) = answer.encode(encoding) {
                    timing = phases(computeEnd: t2, encode: Stopwatch.seconds(clock.now - t2))
                    return trailer(timing)
                }
                count(encoding, body: answer.arena?.sentInPlace == true ? "in_place" : "copied")
                return .whole(body: bytes, contentType: type, phases: timing, encodeStart: t2, done: clock.now)
            case .stream(let stream):
                // The first block before the first byte; its timing is all the header can carry.
                let first = try stream.nextBlock()
                let t2 = clock.now
                let timing = phases(computeEnd: t2, encode: 0)
                count(.safetensors, body: "streamed")
                var fields = Answer()
                fields.add("mode", string: stream.mode.rawValue)
                let metadata = Answer.metadata(fields.fields + trailer(timing).fields)
                return .stream(
                    stream, session, header: stream.header(metadata: metadata), first: first, length: stream.contentLength(metadata: metadata),
                    phases: timing, done: clock.now)
            }
        }
        var headers = HTTPFields()
        switch reply {
        case .whole(let bytes, let type, let phases, let encodeStart, let done):
            // Known only now, so in the header and not in the body: `encode` up to the last byte of the
            // answer's buffer (a safetensors body's `timing` sits in its header, before the tensor
            // bytes are copied in), and `return`, from there until this handler resumed (the hand-off
            // from the compute thread back).
            let encode = Stopwatch.seconds(done - encodeStart)
            headers[.contentType] = type
            headers[.serverTiming] = ServerTiming.value(
                phases.map { $0.0 == "encode" ? ("encode", encode) : $0 } + [("return", Stopwatch.seconds(clock.now - done))])
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: bytes))
        case .stream(let stream, let session, let header, let first, let length, let phases, let done):
            headers[.contentType] = "application/octet-stream"
            headers[.serverTiming] = ServerTiming.value(phases + [("return", Stopwatch.seconds(clock.now - done))])
            let body = ResponseBody(contentLength: length) { writer in
                defer { session.end() }
                try await writer.write(header)
                try await writer.write(first)
                while !stream.finished {
                    try await writer.write(try await session.run { try stream.nextBlock() })
                }
                try await writer.write(stream.tail())
                try await writer.finish(nil)
            }
            return Response(status: .ok, headers: headers, body: body)
        }
    }
}
