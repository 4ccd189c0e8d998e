import GradCodec
import GradCore
import Hummingbird

/// An error in UM-Bridge's own terms.
struct UMBridgeError: Error {
    var type: String
    var message: String
    var status: HTTPResponse.Status = .badRequest
}

/// Every failure on the UM-Bridge routes as `{"error": {"type", "message"}}`.
struct UMBridgeErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as UMBridgeError {
            return Self.error(e.type, e.message, e.status)
        } catch {
            let problem = Problem.from(error, names: .umbridge)
            let type: String =
                switch problem?.status {
                case .unauthorized?: "Unauthorized"
                case .notFound?: "ModelNotFound"
                case .serviceUnavailable?, .gatewayTimeout?: "Unavailable"
                case .badRequest?, .unprocessableContent?, .contentTooLarge?: "InvalidInput"
                default: "InternalError"
                }
            let message =
                problem.map { p in p.errors.isEmpty ? p.detail : p.errors.map { "\($0.path): \($0.message)" }.joined(separator: "; ") } ?? "internal error"
            let status: HTTPResponse.Status = problem?.status == .unprocessableContent ? .badRequest : (problem?.status ?? .internalServerError)
            return Self.error(type, message, status, headers: problem?.headers ?? [:])
        }
    }

    static func error(_ type: String, _ message: String, _ status: HTTPResponse.Status, headers: HTTPFields = [:]) -> Response {
        var w = JSONWriter()
        w.beginObject()
        w.key("error")
        w.beginObject()
        w.key("type")
        w.string(type)
        w.key("message")
        w.string(message)
        w.endObject()
        w.endObject()
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: w.takeBytes())))
    }
}
