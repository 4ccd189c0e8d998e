import Hummingbird

extension RequestPipeline {
    /// The route group of a protocol adapter under `path`: the adapter's own error middleware
    /// first (so every failure, a missing API key included, is answered in the protocol's shape),
    /// then the API key check when one is set.
    func adapterGroup<M: RouterMiddleware>(
        _ router: Router<GradRequestContext>, _ path: RouterPath, errors: M
    ) -> RouterGroup<GradRequestContext> where M.Context == GradRequestContext {
        let group = router.group(path)
        group.add(middleware: errors)
        if let key = configuration.apiKey { group.add(middleware: AuthMiddleware(apiKey: key)) }
        return group
    }
}

extension Response {
    /// A `200 application/json` answer of fixed text.
    static func json(_ text: String) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}
