import GradCodec
import GradCore
import Hummingbird

/// `POST /v1/{forward,vjp,jvp,jacobian,divergence}`: the handler only collects the body; parsing,
/// validation, the math and encoding all run on a compute thread.
struct ComputeController<Context: RequestContext>: Sendable {
    let pool: ComputePool
    let runner: OperationRunner
    let configuration: ServerConfiguration

    var endpoints: RouteCollection<Context> {
        let routes = RouteCollection(context: Context.self)
        for op in Operation.allCases {
            routes.post(RouterPath(op.rawValue)) { request, context in try await handle(op, request, context) }
        }
        return routes
    }

    func handle(_ op: Operation, _ request: Request, _ context: Context) async throws -> Response {
        let arrival = ContinuousClock.now
        let body = try await BodyReader.collect(request, limit: configuration.maxBodyBytes)
        let contentType = request.headers[.contentType]
        let runner = self.runner
        let deadline = configuration.deadline(from: arrival)
        let (bytes, type, serverTiming) = try await pool.run(deadline: deadline) { queueSeconds in
            let clock = ContinuousClock()
            let t0 = clock.now
            let doc = try RequestDocument.parse(body, contentType: contentType)
            let t1 = clock.now
            let (answer, encoding) = try runner.run(op, doc)
            let t2 = clock.now
            var timing: [(String, Double)] = []
            let (bytes, type) = answer.encode(encoding) {
                timing = [
                    ("queue", queueSeconds), ("decode", Stopwatch.seconds(t1 - t0)), ("compute", Stopwatch.seconds(t2 - t1)),
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

/// Reads a request body within the size limit: a declared length above it is refused at once,
/// a chunked body as soon as it passes the limit. The buffer is sized from `Content-Length`, so
/// a megabyte body is not copied again each time the buffer grows.
enum BodyReader {
    static func collect(_ request: Request, limit: Int) async throws -> ByteBuffer {
        let declared = request.headers[.contentLength].flatMap { Int($0) }
        if let declared, declared > limit {
            throw Problem(.contentTooLarge, title: "Body too large", detail: "the body declares \(declared) bytes; the limit is \(limit) (--max-body-bytes)")
        }
        var buffer = ByteBufferAllocator().buffer(capacity: min(declared ?? 16_384, limit))
        var total = 0
        for try await fragment in request.body {
            total += fragment.readableBytes
            if total > limit {
                throw Problem(.contentTooLarge, title: "Body too large", detail: "the body is larger than the limit of \(limit) bytes (--max-body-bytes)")
            }
            buffer.writeImmutableBuffer(fragment)
        }
        return buffer
    }
}
