import GradCodec
import GradCore
import Hummingbird

/// The Tesseract protocol for every registered model, under `/tesseract/{id}/`, so that
/// `tesseract_core.Tesseract.from_url(server + "/tesseract/" + id)` and tesseract-jax work unchanged.
///
/// Inputs `x` `[B, D]` and, for time-varying models, `t` `[B]`; output `y` `[B, D']`. The
/// Jacobian has Tesseract's shape `(*y.shape, *x.shape)`: block-diagonal `[B, D', B, D]`.
/// A 422 is Tesseract's `{"detail": [{"type", "loc", "msg"}]}` (the SDK raises pydantic's
/// ValidationError from it); other errors are problem+json (the SDK raises RuntimeError).
/// Apply answers carry no extra keys (tesseract-jax flattens them); timing is in `Server-Timing`.
/// The compute endpoints of the Tesseract protocol (`POST /tesseract/{id}/<endpoint>`).
enum TesseractEndpoint: String, CaseIterable, Sendable {
    case apply
    case abstractEval = "abstract_eval"
    case vectorJacobianProduct = "vector_jacobian_product"
    case jacobianVectorProduct = "jacobian_vector_product"
    case jacobian

    /// The top-level fields a body of this endpoint may hold.
    var fields: Set<String> {
        switch self {
        case .apply, .abstractEval: ["inputs"]
        case .vectorJacobianProduct: ["inputs", "vjp_inputs", "vjp_outputs", "cotangent_vector"]
        case .jacobianVectorProduct: ["inputs", "jvp_inputs", "jvp_outputs", "tangent_vector"]
        case .jacobian: ["inputs", "jac_inputs", "jac_outputs"]
        }
    }
}

struct TesseractController: Sendable {
    typealias Context = GradRequestContext
    let registry: ModelRegistry
    let pipeline: RequestPipeline

    func addRoutes(to router: Router<Context>) {
        let group = pipeline.adapterGroup(router, "tesseract/:id", errors: TesseractErrorMiddleware())
        group.get("health") { _, context in
            _ = try model(context)
            return Response.json(#"{"status":"ok"}"#)
        }
        group.get("openapi.json") { _, context in
            let (id, entry) = try model(context)
            let document = try TesseractOpenAPI(id: id, model: entry).encoded()
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: document)))
        }
        for endpoint in TesseractEndpoint.allCases {
            group.post(RouterPath(endpoint.rawValue)) { request, context in try await handle(endpoint, request, context) }
        }
    }

    private func model(_ context: Context) throws -> (String, AnyModel) {
        let id = try context.parameters.require("id")
        guard let entry = registry.get(id) else {
            throw Problem(.notFound, title: "Unknown model", detail: "no registered model has id \(id); register it with POST /v1/models")
        }
        return (id, entry.model)
    }

    func handle(_ endpoint: TesseractEndpoint, _ request: Request, _ context: Context) async throws -> Response {
        let (_, model) = try model(context)
        guard let format = TesseractArrays.format(accept: request.headers[.accept]) else {
            throw Problem(
                .notAcceptable, title: "Not acceptable",
                detail: "available formats: application/json, application/json+base64 (uncompressed, gpu_transport=none)")
        }
        let (bytes, timing) = try await pipeline.run(request, context) { job -> ([UInt8], String) in
            let clock = ContinuousClock()
            let t0 = clock.now
            let doc = try job.body.withUnsafeReadableBytes { try JSONParser.parse($0) }
            guard case .object(let root) = doc else { throw GradError.invalid("body", "expected a JSON object") }
            var w = JSONWriter()
            try TesseractEndpoints(model: model, root: root, format: format, job: job).run(endpoint, into: &w)
            let t1 = clock.now
            return (
                w.takeBytes(),
                ServerTiming.value([("queue", job.queueSeconds), ("compute", Stopwatch.seconds(t1 - t0))])
            )
        }
        var headers = HTTPFields()
        headers[.contentType] = format == .json ? "application/json" : "application/json+base64"
        headers[.serverTiming] = timing
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
