import Foundation
import GradCore

/// The OpenAPI document a Tesseract serves at `openapi.json`, as the SDK and tesseract-jax read
/// it: relative `paths`, the supported formats, and the apply schemas marking x, t and y
/// differentiable with their shapes and dtype.
struct TesseractOpenAPI: Encodable {
    /// `info` of the document.
    struct Info: Encodable {
        let title: String
        let version: String
    }

    /// One path's operation.
    struct Operation: Encodable {
        let operationId: String
    }

    /// `components`.
    struct Components: Encodable {
        let schemas: [String: Schema]
    }

    /// The subset of JSON Schema (with Tesseract's extensions) the document uses.
    struct Schema: Encodable {
        var title: String? = nil
        var type: String? = nil
        var const: String? = nil
        var enumValues: [String]? = nil
        var arrayFlags: [String]? = nil
        var properties: [String: Schema]? = nil
        var required: [String]? = nil
        var ref: String? = nil
        var differentiableArrays: [String: DifferentiableArray]? = nil

        enum CodingKeys: String, CodingKey {
            case title, type, const, properties, required
            case enumValues = "enum"
            case arrayFlags = "array_flags"
            case ref = "$ref"
            case differentiableArrays = "differentiable_arrays"
        }
    }

    /// A differentiable array's shape (`null` for an extent the model does not fix) and dtype.
    struct DifferentiableArray: Encodable {
        let shape: [Int?]
        let dtype: String
    }

    let openapi = "3.1.0"
    let info: Info
    let outputFormats = ["json", "json+base64"]
    let gpuTransports = ["none"]
    let compressions = ["none"]
    let paths: [String: [String: Operation]]
    let components: Components

    enum CodingKeys: String, CodingKey {
        case openapi, info, paths, components
        case outputFormats = "x-supported-output-formats"
        case gpuTransports = "x-supported-gpu-transports"
        case compressions = "x-supported-compressions"
    }

    /// The document for registered model `id`.
    init(id: String, model: AnyModel) {
        let dtype = model.dtype.rawValue
        let d = model.inputWidth
        let dOut = d.map { model.outputWidth(d: $0) }
        let inputs: [(name: String, shape: [Int?])] = [("x", [nil, d])] + (model.hasT ? [("t", [nil])] : [])
        func array(_ name: String) -> Schema {
            Schema(
                title: name, type: "object", arrayFlags: ["DIFFERENTIABLE"],
                properties: [
                    "object_type": Schema(const: "array"), "shape": Schema(type: "array"), "dtype": Schema(enumValues: [dtype]),
                ])
        }
        func differentiable(_ arrays: [(name: String, shape: [Int?])]) -> [String: DifferentiableArray] {
            Dictionary(uniqueKeysWithValues: arrays.map { ($0.name, DifferentiableArray(shape: $0.shape, dtype: dtype)) })
        }
        info = Info(title: "gradserve model \(id)", version: GradserveVersion.current)
        var paths: [String: [String: Operation]] = ["/health": ["get": Operation(operationId: "health")]]
        for endpoint in TesseractEndpoint.allCases { paths["/\(endpoint.rawValue)"] = ["post": Operation(operationId: endpoint.rawValue)] }
        self.paths = paths
        components = Components(schemas: [
            "Apply_InputSchema": Schema(
                type: "object", properties: Dictionary(uniqueKeysWithValues: inputs.map { ($0.name, array($0.name)) }),
                required: inputs.map(\.name)),
            "Apply_OutputSchema": Schema(type: "object", properties: ["y": array("y")]),
            "ApplyInputSchema": Schema(
                properties: ["inputs": Schema(ref: "#/components/schemas/Apply_InputSchema")], differentiableArrays: differentiable(inputs)),
            "ApplyOutputSchema": Schema(ref: "#/components/schemas/Apply_OutputSchema", differentiableArrays: differentiable([("y", [nil, dOut])])),
        ])
    }

    /// The document as JSON bytes.
    func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(self))
    }
}
