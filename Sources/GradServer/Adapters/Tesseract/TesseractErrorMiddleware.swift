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
            var w = JSONWriter()
            w.beginObject()
            w.key("detail")
            w.beginArray()
            for issue in issues {
                w.beginObject()
                w.key("type")
                w.string("value_error")
                w.key("loc")
                w.beginArray()
                w.string("body")
                for part in PlaceNames.tesseract(issue.place).split(separator: ".") { w.string(String(part)) }
                w.endArray()
                w.key("msg")
                w.string(issue.message)
                w.endObject()
            }
            w.endArray()
            w.endObject()
            return Response(
                status: .unprocessableContent, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: w.takeBytes())))
        } catch let e as JSONParseError {
            var w = JSONWriter()
            w.beginObject()
            w.key("detail")
            w.beginArray()
            w.beginObject()
            w.key("type")
            w.string("json_invalid")
            w.key("loc")
            w.beginArray()
            w.string("body")
            w.endArray()
            w.key("msg")
            w.string(e.description)
            w.endObject()
            w.endArray()
            w.endObject()
            return Response(
                status: .unprocessableContent, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: w.takeBytes())))
        }
    }
}
