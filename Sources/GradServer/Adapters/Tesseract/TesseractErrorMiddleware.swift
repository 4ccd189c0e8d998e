import GradCodec
import GradCore
import Hummingbird

/// Tesseract's error shapes: a 422 as `{"detail": [{"type", "loc", "msg"}]}`; anything else as problem+json.
struct TesseractErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as GradError {
            let issues: [(place: Place, message: String)]
            switch error {
            case .invalid(let list): issues = list.map { ($0.place, $0.message) }
            case .outputTooLarge(let place, let elements, let limit):
                issues = [(place, "the answer would hold \(elements) numbers, above the server's limit of \(limit) (--max-output-elements)")]
            case .limitExceeded(let place, let limit, let message): issues = [(place, "\(message) (\(limit))")]
            case .deadlineExceeded, .cancelled: throw error
            }
            return Self.detail(
                issues.map { (type: "value_error", loc: PlaceNames.tesseract($0.place).split(separator: ".").map(String.init), msg: $0.message) })
        } catch let e as JSONParseError {
            return Self.detail([(type: "json_invalid", loc: [], msg: e.description)])
        }
    }

    /// A 422 as pydantic writes it: `{"detail": [{"type", "loc": ["body", …], "msg"}]}`.
    static func detail(_ items: [(type: String, loc: [String], msg: String)]) -> Response {
        var w = JSONWriter()
        w.beginObject()
        w.key("detail")
        w.beginArray()
        for item in items {
            w.beginObject()
            w.key("type")
            w.string(item.type)
            w.key("loc")
            w.beginArray()
            w.string("body")
            for part in item.loc { w.string(part) }
            w.endArray()
            w.key("msg")
            w.string(item.msg)
            w.endObject()
        }
        w.endArray()
        w.endObject()
        return Response(
            status: .unprocessableContent, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: w.takeBytes())))

    }
}
