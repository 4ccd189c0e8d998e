import Foundation
import GradCore
import Hummingbird

/// The fixed-shape JSON answers of the service (health, readiness, `/v1/info`, model
/// summaries), as Encodable values: their field names are in one place and match
/// `openapi.yaml`'s schemas. Tensor-carrying answers are written by ``Answer`` instead (a
/// hand-written writer, for speed and the binary forms).
extension Response {
    /// `status` with `value` as `application/json`.
    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) throws -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try AnswerEncoder.encode(value))))
    }
}

/// One JSON encoder configuration for every fixed-shape answer.
enum AnswerEncoder {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(value))
    }
}

/// `/healthz`.
struct HealthAnswer: Encodable {
    let status = "ok"
}

/// `/readyz`: whether this replica takes new work, and why not.
struct ReadinessAnswer: Encodable {
    let status: String
    let pending: Int
    let capacity: Int
    let memoryReservedBytes: Int
    let memoryLimitBytes: Int

    enum CodingKeys: String, CodingKey {
        case status, pending, capacity
        case memoryReservedBytes = "memory_reserved_bytes"
        case memoryLimitBytes = "memory_limit_bytes"
    }
}

/// `/v1/info`: what this server is and what it accepts.
struct InfoAnswer: Encodable {
    /// The BLAS library in use.
    struct BLAS: Encodable {
        let library = "OpenBLAS"
        let version: String
        let core: String
        let threads: Int
        let config: String
    }

    /// Every limit, as configured.
    struct Limits: Encodable {
        let maxBodyBytes: Int
        let maxOutputElements: Int
        let maxQueued: Int
        let maxRequestMemoryBytes: Int
        let memoryLimitBytes: Int
        let maxLayers: Int
        let maxConnections: Int
        let maxModels: Int
        let maxRegistryBytes: Int
        let maxRequestGFLOP: Double
        let deadlineSeconds: Double
        let bodyTimeoutSeconds: Double
        let writeTimeoutSeconds: Double
        let benchmarkMaxSeconds: Double
        let allowedOrigins: [String]
        let allowedHosts: [String]

        enum CodingKeys: String, CodingKey {
            case maxBodyBytes = "max_body_bytes"
            case maxOutputElements = "max_output_elements"
            case maxQueued = "max_queued"
            case maxRequestMemoryBytes = "max_request_memory_bytes"
            case memoryLimitBytes = "memory_limit_bytes"
            case maxLayers = "max_layers"
            case maxConnections = "max_connections"
            case maxModels = "max_models"
            case maxRegistryBytes = "max_registry_bytes"
            case maxRequestGFLOP = "max_request_gflop"
            case deadlineSeconds = "deadline_s"
            case bodyTimeoutSeconds = "body_timeout_s"
            case writeTimeoutSeconds = "write_timeout_s"
            case benchmarkMaxSeconds = "benchmark_max_s"
            case allowedOrigins = "allowed_origins"
            case allowedHosts = "allowed_hosts"
        }

        init(_ c: ServerConfiguration, memoryLimit: Int) {
            maxBodyBytes = c.maxBodyBytes
            maxOutputElements = c.maxOutputElements
            maxQueued = c.maxQueued
            maxRequestMemoryBytes = c.maxRequestMemory
            memoryLimitBytes = memoryLimit
            maxLayers = c.maxLayers
            maxConnections = c.maxConnections
            maxModels = c.maxModels
            maxRegistryBytes = c.maxRegistryBytes
            maxRequestGFLOP = c.maxRequestGFLOP
            deadlineSeconds = c.deadlineSeconds
            bodyTimeoutSeconds = c.bodyTimeoutSeconds
            writeTimeoutSeconds = c.writeTimeoutSeconds
            benchmarkMaxSeconds = c.benchmarkMaxSeconds
            allowedOrigins = c.allowedOrigins
            allowedHosts = c.allowedHosts
        }
    }

    /// Where the protocol adapters live.
    struct Protocols: Encodable {
        let tesseract = "/tesseract/{id}/"
        let umbridge = "/umbridge/{id}/"
    }

    let version = GradserveVersion.current
    let blas: BLAS
    let cpu: String
    let cores: Int
    let workers: Int
    let threadsPerRequest: Int
    let inlineMilliseconds: Double
    let limits: Limits
    let auth: Bool
    let models: Int
    let operations: [String] = Operation.allCases.map(\.rawValue) + ["benchmark"]
    let protocols = Protocols()
    let outputEncodings: [String] = OutputEncoding.allCases.map(\.rawValue)

    enum CodingKeys: String, CodingKey {
        case version, blas, cpu, cores, workers, limits, auth, models, operations, protocols
        case threadsPerRequest = "threads_per_request"
        case inlineMilliseconds = "inline_ms"
        case outputEncodings = "output_encodings"
    }
}

/// A registered model's signature and sizes, never its weights (`/v1/models`).
struct ModelSummary: Encodable {
    /// A parameter's name and shape.
    struct Parameter: Encodable {
        let name: String
        let shape: [Int]
    }

    let id: String
    let name: String?
    let created: String
    let dtype: String
    let inputs: [String]
    let inputWidth: Int?
    let outputWidth: Int?
    let layers: [String]
    let parameterCount: Int
    let parameters: [Parameter]

    init(_ entry: RegisteredModel) {
        let m = entry.model
        id = entry.id
        name = entry.name
        created = entry.created
        dtype = m.dtype.rawValue
        inputs = m.hasT ? ["x", "t"] : ["x"]
        inputWidth = m.inputWidth
        outputWidth = m.inputWidth.map { m.outputWidth(d: $0) }
        layers = m.ops
        parameterCount = m.parameterCount
        parameters = m.parameters.map { Parameter(name: $0.name, shape: $0.shape) }
    }

    enum CodingKeys: String, CodingKey {
        case id, name, created, dtype, inputs, layers, parameters
        case inputWidth = "input_width"
        case outputWidth = "output_width"
        case parameterCount = "parameter_count"
    }

    /// Absent values are `null`, as the schema has them (not left out).
    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(name, forKey: .name)
        try c.encode(created, forKey: .created)
        try c.encode(dtype, forKey: .dtype)
        try c.encode(inputs, forKey: .inputs)
        try c.encode(inputWidth, forKey: .inputWidth)
        try c.encode(outputWidth, forKey: .outputWidth)
        try c.encode(layers, forKey: .layers)
        try c.encode(parameterCount, forKey: .parameterCount)
        try c.encode(parameters, forKey: .parameters)
    }
}

/// `GET /v1/models`.
struct ModelList: Encodable {
    let models: [ModelSummary]
}
