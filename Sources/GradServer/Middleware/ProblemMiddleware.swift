import Hummingbird
import Logging

/// Turns every error into `application/problem+json` in one place; anything unmapped is a logged 500.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    /// Answers which methods a path supports, for 405 instead of 404.
    let allowedMethods: @Sendable (String) -> [HTTPRequest.Method]

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            if let http = error as? HTTPError, http.status == .notFound {
                let allowed = allowedMethods(request.uri.path)
                if !allowed.isEmpty, !allowed.contains(request.method) {
                    var headers = HTTPFields()
                    let allow = allowed.map(\.rawValue).joined(separator: ", ")
                    headers[.allow] = allow
                    throw Problem(
                        .methodNotAllowed, title: "Method not allowed",
                        detail: "\(request.method.rawValue) is not supported on \(request.uri.path); use \(allow)", headers: headers)
                }
                throw Problem(.notFound, title: "Not found", detail: "no route \(request.method.rawValue) \(request.uri.path)")
            }
            if let problem = Problem.from(error) { throw problem }
            context.logger.error("unhandled error", metadata: ["error": "\(String(reflecting: error))", "path": "\(request.uri.path)"])
            throw Problem(.internalServerError, title: "Internal server error", detail: "the server failed to handle this request; it has been logged")
        }
    }
}
