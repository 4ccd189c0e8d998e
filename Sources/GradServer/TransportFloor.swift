import GradCore
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import Synchronization

/// The transport floor: the same HTTP stack as the service (Hummingbird's HTTP/1 server, the
/// body read into one buffer sized from `Content-Length`), with no computation at all. A
/// benchmark stores the answer gradserve gave for a request (`PUT /floor/{key}` with that
/// answer's bytes and content type) and then posts the same request here with `X-Floor-Key: key`:
/// the floor reads the whole body and answers the stored bytes. What gradserve takes beyond the
/// floor for the same exchange is its own doing (parsing, planning, computing, encoding, hand-offs).
///
/// `gradserve floor` serves it; `bench/transport.py` runs both side by side. Not for production:
/// it stores whatever it is given (bounded by ``TransportFloor/maxStored`` and the body limit).
public enum TransportFloor {
    /// Prepared answers kept at most (a benchmark needs one per workload and encoding).
    public static let maxStored = 256

    /// The floor's application on `host:port`.
    public static func application(host: String, port: Int, maxBodyBytes: Int = 256 << 20, logger: Logger? = nil) -> some ApplicationProtocol {
        let answers = Answers()
        let router = Router()
        router.put("floor/:key") { request, context in
            let key = try context.parameters.require("key")
            let body = try await request.body.collect(upTo: maxBodyBytes)
            let type = request.headers[.contentType] ?? "application/octet-stream"
            guard answers.store(key, Prepared(body: body, contentType: type)) else {
                return Response(status: .init(code: 507, reasonPhrase: "Insufficient Storage"))
            }
            return Response(status: .noContent)
        }
        router.post("v1/**") { request, _ in
            // The body is read whole by the service's own reader.
            _ = try await BodyReader.collect(request, limit: maxBodyBytes)
            let key = request.headers[.floorKey] ?? ""
            guard let answer = answers.get(key) else {
                return Response(
                    status: .notFound, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "no answer stored under \(key)\n")))
            }
            return Response(status: .ok, headers: [.contentType: answer.contentType], body: .init(byteBuffer: answer.body))
        }
        router.get("healthz") { _, _ in "ok\n" }
        return Application(
            router: router,
            server: .http1(configuration: .init(additionalChannelHandlers: [ReadSize()], idleTimeout: .seconds(120))),
            configuration: .init(address: .hostname(host, port: port), serverName: "gradserve-floor/\(GradserveVersion.current)"),
            logger: logger ?? Logger(label: "gradserve-floor"))
    }

    struct Prepared: Sendable {
        let body: ByteBuffer
        let contentType: String
    }

    final class Answers: Sendable {
        private let byKey = Mutex<[String: Prepared]>([:])

        func store(_ key: String, _ answer: Prepared) -> Bool {
            byKey.withLock { map in
                if map[key] == nil, map.count >= TransportFloor.maxStored { return false }
                map[key] = answer
                return true
            }
        }

        func get(_ key: String) -> Prepared? { byKey.withLock { $0[key] } }
    }
}
