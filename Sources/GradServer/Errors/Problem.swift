import GradCodec
import GradCore
import Hummingbird
import NIOCore

/// An RFC 9457 problem: every error the service answers, as `application/problem+json`.
public struct Problem: Error, HTTPResponseError, Sendable {
    /// The HTTP status.
    public var status: HTTPResponse.Status
    /// A short, stable summary of the problem type.
    public var title: String
    /// What happened in this request.
    public var detail: String
    /// Per-field problems, each with its path in the request's own names.
    public var errors: [(path: String, message: String)]
    /// Extra headers (`Retry-After`, `Allow`, `WWW-Authenticate`).
    public var headers: HTTPFields

    /// Creates a problem.
    public init(
        _ status: HTTPResponse.Status, title: String, detail: String, errors: [(path: String, message: String)] = [], headers: HTTPFields = [:]
    ) {
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers
    }

    /// The `type` URI: a stable slug per status under the API's namespace.
    var type: String { "https://gradserve.dev/problems/\(status.code)" }

    /// The JSON body.
    public var json: [UInt8] {
        var w = JSONWriter()
        w.beginObject()
        w.key("type")
        w.string(type)
        w.key("title")
        w.string(title)
        w.key("status")
        w.number(status.code)
        w.key("detail")
        w.string(detail)
        w.key("errors")
        w.beginArray()
        for e in errors {
            w.beginObject()
            w.key("path")
            w.string(e.path)
            w.key("message")
            w.string(e.message)
            w.endObject()
        }
        w.endArray()
        w.endObject()
        return w.bytes
    }

    /// The `application/problem+json` response.
    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers = self.headers
        headers[.contentType] = "application/problem+json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: json)))
    }
}

extension Problem {
    /// Invalid content (422) listing every field problem, with places spelled by `names`.
    static func invalid(_ issues: [FieldIssue], names: PlaceNames = .v1) -> Problem {
        let errors = issues.map { (path: names($0.place), message: $0.message) }
        let described = errors.map { "\($0.path): \($0.message)" }
        let detail = described.count == 1 ? described[0] : "\(described.count) problems: " + described.joined(separator: "; ")
        return Problem(.unprocessableContent, title: "Invalid request content", detail: detail, errors: errors)
    }

    /// Maps any error to the problem the client sees, with places spelled by `names`; nil for
    /// errors that are the service's fault.
    static func from(_ error: any Error, names: PlaceNames = .v1) -> Problem? {
        switch error {
        case let p as Problem: return p
        case let e as GradError:
            switch e {
            case .invalid(let issues): return .invalid(issues, names: names)
            case .outputTooLarge(let place, let elements, let limit):
                return Problem(
                    .unprocessableContent, title: "Answer too large",
                    detail: "the answer would hold \(elements) numbers, above the output limit of \(limit) (--max-output-elements)",
                    errors: [(names(place), "would produce \(elements) numbers; the limit is \(limit)")])
            case .deadlineExceeded:
                return Problem(
                    .gatewayTimeout, title: "Deadline exceeded",
                    detail: "the request did not finish within the server's deadline (--deadline); its computation was stopped")
            case .cancelled:
                // Nobody reads this answer (the client went away); 499 is nginx's "client closed request".
                return Problem(HTTPResponse.Status(code: 499, reasonPhrase: "Client Closed Request"), title: "Cancelled", detail: "the client went away")
            case .limitExceeded(let place, let limit, let message):
                return Problem(
                    .unprocessableContent, title: "Request exceeds a limit", detail: "\(message) (\(limit))",
                    errors: [(names(place), "\(message) (\(limit))")])
            }
        case is NIOTooManyBytesError:
            return Problem(.contentTooLarge, title: "Body too large", detail: "the request body is larger than the server's limit (--max-body-bytes)")
        case let e as JSONParseError:
            return Problem(.badRequest, title: "Malformed JSON", detail: e.description)
        case let e as HTTPError:
            switch e.status {
            case .contentTooLarge:
                return Problem(.contentTooLarge, title: "Body too large", detail: "the request body is larger than the server's limit (--max-body-bytes)")
            case .notFound:
                return Problem(.notFound, title: "Not found", detail: e.body ?? "no such route")
            default:
                return Problem(e.status, title: e.status.reasonPhrase, detail: e.body ?? e.status.reasonPhrase, headers: e.headers)
            }
        default:
            return nil
        }
    }
}
