import Crypto
import Hummingbird

/// Requires `Authorization: Bearer <key>` when an API key is configured. The comparison runs in
/// constant time over SHA-256 digests, so neither the content nor the length of the key leaks.
struct AuthMiddleware<Context: RequestContext>: RouterMiddleware {
    let expectedDigest: [UInt8]

    init(apiKey: String) { expectedDigest = Array(SHA256.hash(data: Array(apiKey.utf8))) }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let header = request.headers[.authorization] ?? ""
        let prefix = "Bearer "
        let token = header.hasPrefix(prefix) ? String(header.dropFirst(prefix.count)) : ""
        let digest = SHA256.hash(data: Array(token.utf8))
        var diff: UInt8 = 0
        for (a, b) in zip(digest, expectedDigest) { diff |= a ^ b }
        guard diff == 0, !token.isEmpty else {
            var headers = HTTPFields()
            headers[.wwwAuthenticate] = "Bearer realm=\"gradserve\""
            throw Problem(
                .unauthorized, title: "Unauthorized",
                detail: header.isEmpty ? "this server requires Authorization: Bearer <api key>" : "the bearer token is not valid", headers: headers)
        }
        return try await next(request, context)
    }
}
