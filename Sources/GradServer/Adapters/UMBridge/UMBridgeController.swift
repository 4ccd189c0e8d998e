import GradCodec
import GradCore
import Hummingbird

/// The UM-Bridge protocol (version 1.0) for every registered model, under `/umbridge/{id}/`, so
/// that `umbridge.HTTPModel(server + "/umbridge/" + id, "forward")` works unchanged.
///
/// One model named `forward`. By default one point per call: inputs `[x (D)]`, or `[x (D), t (1)]`
/// for time-varying models; output `[y (D')]`. With `config: {"batch": B}` a call carries B points
/// flattened row-major: `[x (B·D), t (B)]` → `[y (B·D')]`. `Gradient` is the VJP `sensᵀJ` and
/// `ApplyJacobian` the JVP `J·vec`. Every error is UM-Bridge's `{"error": {"type", "message"}}`
/// (the client reads no status code).
/// The routes of the UM-Bridge protocol (`POST /umbridge/{id}/<route>`), besides `GET Info`.
enum UMBridgeRoute: String, CaseIterable, Sendable {
    case modelInfo = "ModelInfo"
    case inputSizes = "InputSizes"
    case outputSizes = "OutputSizes"
    case evaluate = "Evaluate"
    case gradient = "Gradient"
    case applyJacobian = "ApplyJacobian"
    case applyHessian = "ApplyHessian"
}

struct UMBridgeController: Sendable {
    typealias Context = GradRequestContext
    let registry: ModelRegistry
    let pipeline: RequestPipeline

    func addRoutes(to router: Router<Context>) {
        let group = pipeline.adapterGroup(router, "umbridge/:id", errors: UMBridgeErrorMiddleware())
        group.get("Info") { _, context in
            // The client reads Info without checking for an error object; an unknown id lists no
            // models, so the client raises its own "Model forward not supported by server!".
            let known = (try? model(context)) != nil
            return Response.json(known ? #"{"protocolVersion":1.0,"models":["forward"]}"# : #"{"protocolVersion":1.0,"models":[]}"#)
        }
        for route in UMBridgeRoute.allCases {
            group.post(RouterPath(route.rawValue)) { request, context in try await handle(route, request, context) }
        }
    }

    private func model(_ context: Context) throws -> AnyModel {
        let id = try context.parameters.require("id")
        guard let entry = registry.get(id) else {
            throw UMBridgeError(type: "ModelNotFound", message: "no registered model has id \(id); register it with POST /v1/models")
        }
        return entry.model
    }

    func handle(_ route: UMBridgeRoute, _ request: Request, _ context: Context) async throws -> Response {
        let model = try model(context)
        let bytes = try await pipeline.run(request, context) { job -> [UInt8] in
            let value = try job.body.withUnsafeReadableBytes { try JSONParser.parse($0) }
            guard case .object(let root) = value else { throw UMBridgeError(type: "InvalidInput", message: "the body must be a JSON object") }
            var w = JSONWriter()
            try UMBridgeEndpoints(model: model, root: root, job: job).run(route, into: &w)
            return w.takeBytes()
        }
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}
