import Hummingbird

/// Cross-site protection for a server that may run keyless on a developer's laptop.
///
/// - A request carrying an `Origin` that is not allowed (`--allow-origin`, default none) gets 403
///   before anything runs: a web page cannot make a browser POST to `127.0.0.1` and have it
///   computed (a form post is a "simple" request that browsers send without a preflight).
///   Clients that send no `Origin` (curl, Python, other servers) are not affected.
/// - With `--allowed-hosts`, a `Host` outside the list gets 403 (DNS rebinding: a foreign name
///   resolving to 127.0.0.1 makes the browser treat the server as same-origin).
///
/// `/healthz`, `/readyz` and `/metrics` are exempt (read-only; Kubernetes probes by pod IP).
///
/// Allowed origins get CORS answers (preflights included) from Hummingbird's `CORSMiddleware`.
struct OriginMiddleware<Context: RequestContext>: RouterMiddleware {
    let allowedOrigins: Set<String>
    let allowedHosts: Set<String>

    init(allowedOrigins: [String], allowedHosts: [String]) {
        self.allowedOrigins = Set(allowedOrigins.map { $0.lowercased() })
        self.allowedHosts = Set(allowedHosts.map { $0.lowercased() })
    }

    /// Read-only probes stay open to every origin and host: orchestrators probe by IP address.
    static var probes: Set<String> { ["/healthz", "/readyz", "/metrics"] }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if Self.probes.contains(request.uri.path) { return try await next(request, context) }
        if !allowedHosts.isEmpty {
            let host = Self.hostName(request.head.authority ?? "")
            guard allowedHosts.contains(host) else {
                throw Problem(
                    .forbidden, title: "Host not allowed",
                    detail: "this server answers to \(allowedHosts.sorted().joined(separator: ", ")) (--allowed-hosts), not \"\(host)\"")
            }
        }
        if let origin = request.headers[.origin], !allowedOrigins.contains("*"), !allowedOrigins.contains(origin.lowercased()) {
            throw Problem(
                .forbidden, title: "Cross-origin request refused",
                detail:
                    "requests from the web origin \(origin) are not allowed; start the server with --allow-origin \(origin) to let that page call it")
        }
        return try await next(request, context)
    }

    /// `example.org:8080` → `example.org`; `[::1]:8080` → `::1`.
    static func hostName(_ authority: String) -> String {
        var a = Substring(authority.lowercased())
        if a.hasPrefix("[") {
            if let end = a.firstIndex(of: "]") { return String(a[a.index(after: a.startIndex)..<end]) }
            return String(a)
        }
        if let colon = a.lastIndex(of: ":") { a = a[..<colon] }
        return String(a)
    }
}
