import GradCodec
import GradCore
import Hummingbird
import NIOPosix

/// `/v1/models`: register (JSON or safetensors), list, describe, delete.
struct ModelsController: Sendable {
    let registry: ModelRegistry
    let pipeline: RequestPipeline

    var endpoints: RouteCollection<GradRequestContext> {
        let routes = RouteCollection(context: GradRequestContext.self)
        routes.post { request, context in try await register(request, context) }
        routes.get { _, _ in try list() }
        routes.get(":id") { _, context in try describe(try context.parameters.require("id")) }
        routes.delete(":id") { _, context in try await delete(try context.parameters.require("id")) }
        return routes
    }

    /// `POST /v1/models`: `{"name", "model"}` as JSON, or a safetensors file of the weights whose
    /// `__metadata__` holds `model` (the architecture as JSON, weights referenced by tensor name) and `name`.
    func register(_ request: Request, _ context: GradRequestContext) async throws -> Response {
        let registry = self.registry
        let (entry, created) = try await pipeline.run(request, context) { job in
            let (modelValue, name, weights) = try Self.decodeRegistration(job.body, contentType: job.contentType)
            let model = try ModelDecoder.decode(modelValue, at: "model", binaryWeights: weights, maxLayers: job.configuration.maxLayers)
            // The canonical form (base64, 4/3 of the weights) and the file written from it.
            let weightBytes = Count(model.parameterCount) * model.dtype.byteCount
            try job.admit(ResourcePlan(outputElements: .zero, peakBytes: weightBytes * 3, flops: .zero), path: "model", answerBytesPerNumber: 0)
            return try registry.register(model, name: name)
        }
        return try Response.json(ModelSummary(entry), status: created ? .created : .ok, headers: [.location: "/v1/models/\(entry.id)"])
    }

    static func decodeRegistration(_ body: ByteBuffer, contentType: String?) throws -> (JSONValue, String?, [String: AnyTensor]) {
        if RequestDocument.isSafetensors(contentType) {
            // Safetensors: metadata "model" (JSON text) and "name"; every tensor is a named weight.
            let file = try body.withUnsafeReadableBytes { try Safetensors.read($0) }
            guard let text = file.metadata["model"] else {
                throw GradError.invalid("__metadata__.model", "required: the architecture as model-format JSON, weights named by tensor")
            }
            return (try JSONParser.parse(text), file.metadata["name"], file.tensors)
        }
        let doc = try RequestDocument.parse(body, contentType: contentType)
        try doc.checkKnown(["name", "model"])
        guard let model = doc.object["model"] else { throw GradError.invalid("model", "required: the model object to register") }
        var name: String? = nil
        if let v = doc.object["name"] {
            guard case .string(let s) = v else { throw GradError.invalid("name", "expected a string") }
            name = s
        }
        return (model, name, [:])
    }

    func list() throws -> Response {
        try Response.json(ModelList(models: registry.all().map(ModelSummary.init)))
    }

    func describe(_ id: String) throws -> Response {
        guard let entry = registry.get(id) else { throw unknown(id) }
        return try Response.json(ModelSummary(entry))
    }

    /// On NIO's blocking-I/O threads: deleting waits for the registry's writer (a registration
    /// may be writing and syncing its file) and syncs the directory, which no task thread should wait on.
    func delete(_ id: String) async throws -> Response {
        let registry = self.registry
        guard try await NIOThreadPool.singleton.runIfActive({ try registry.delete(id) }) else { throw unknown(id) }
        return Response(status: .noContent)
    }

    private func unknown(_ id: String) -> Problem {
        Problem(.notFound, title: "Unknown model", detail: "no registered model has id \(id)", errors: [(path: "id", message: "unknown model id")])
    }
}
