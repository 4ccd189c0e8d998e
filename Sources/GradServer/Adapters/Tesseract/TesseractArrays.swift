import ExtrasBase64
import GradCodec
import GradCore

/// Tesseract's array encoding: `{"object_type": "array", "shape", "dtype", "data": {"buffer", "encoding"}}`
/// with a base64 or JSON (`json`/`raw`) buffer; plain nested lists are accepted too, as the
/// Tesseract runtime does. Paths in errors are Tesseract `loc` paths (`inputs.x`).
enum TesseractArrays {
    /// Output encodings a client may ask for with `Accept`.
    enum Format: String {
        case json
        case jsonBase64 = "json+base64"
    }

    /// Picks the answer format from `Accept` as the Tesseract runtime does: the first satisfiable
    /// media range; `*/*`, `application/*` or none mean JSON. Nil when nothing is satisfiable.
    static func format(accept: String?) -> Format? {
        guard let accept, !accept.isEmpty else { return .json }
        for range in accept.split(separator: ",") {
            let parts = range.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            let media = parts.first?.lowercased() ?? ""
            let params = parts.dropFirst().map { $0.lowercased().replacingOccurrences(of: " ", with: "") }
            if params.contains(where: {
                ($0.hasPrefix("gpu_transport=") && $0 != "gpu_transport=none") || ($0.hasPrefix("compression=") && $0 != "compression=none")
            }) {
                continue
            }
            switch media {
            case "*/*", "application/*", "application/json": return .json
            case "application/json+base64": return .jsonBase64
            default: continue
            }
        }
        return nil
    }

    /// The shape one array field declares, read without decoding its data; the same checks on the
    /// shape as ``decode(_:at:)``.
    static func shape(of value: JSONValue, at path: String) throws(GradError) -> [Int] {
        switch value {
        case .numbers(let shape, _): return shape
        case .number: return []
        case .object(let o):
            guard case .numbers(let s, let dims)? = o["shape"] ?? .numbers(shape: [0], values: []), s.count == 1,
                let shape = Optional(dims.compactMap { Int(exactly: $0) }), shape.count == dims.count, shape.allSatisfy({ $0 >= 0 })
            else { throw .invalid("\(path).shape", "expected a list of non-negative integers") }
            guard let count = Shape.elementCount(shape), count <= TensorDecoder.maxElements else {
                throw .invalid("\(path).shape", "\(Shape.describe(shape)) holds more than the \(TensorDecoder.maxElements) elements this server reads")
            }
            return shape
        default:
            throw .invalid(path, "expected an array (encoded dict or nested list), got \(value.typeName)")
        }
    }

    /// Decodes one array field.
    static func decode(_ value: JSONValue, at path: String) throws(GradError) -> AnyTensor {
        switch value {
        case .numbers(let shape, let values):
            return try finite(.float64(Tensor(shape: shape, scalars: values)), at: path)
        case .number(let v):
            return try finite(.float64(Tensor(shape: [], scalars: [v])), at: path)
        case .object(let o):
            if let t = o["object_type"], t != .string("array") { throw .invalid("\(path).object_type", "expected \"array\"") }
            let shape = try self.shape(of: value, at: path)
            let count = Shape.elementCount(shape)!  // checked by shape(of:at:)
            guard case .string(let dtypeName)? = o["dtype"] else { throw .invalid("\(path).dtype", "required") }
            guard case .object(let data)? = o["data"], case .string(let encoding)? = data["encoding"], let buffer = data["buffer"] else {
                throw .invalid("\(path).data", "expected {\"buffer\", \"encoding\"}")
            }
            if let c = data["compression"], c != .null, c != .string("none") {
                throw .invalid("\(path).data.compression", "only uncompressed arrays are accepted")
            }
            switch encoding {
            case "base64":
                guard case .string(let text) = buffer else { throw .invalid("\(path).data.buffer", "expected a base64 string") }
                let bytes: [UInt8]
                do { bytes = try Base64.decode(bytes: text.utf8) } catch { throw .invalid("\(path).data.buffer", "invalid base64") }
                guard let dtype = DType(rawValue: dtypeName) else { throw .invalid("\(path).dtype", "expected float32 or float64, got \(dtypeName)") }
                guard bytes.count == count * dtype.byteCount else {
                    throw .invalid(
                        "\(path).data.buffer", "expected \(count * dtype.byteCount) bytes for \(dtypeName) \(Shape.describe(shape)), got \(bytes.count)")
                }
                return try TensorDecoder.fromBytes(bytes, shape: shape, dtype: dtype, at: path)
            case "json", "raw":
                guard ["float32", "float64", "float16", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"].contains(dtypeName)
                else {
                    throw .invalid("\(path).dtype", "unsupported dtype \(dtypeName)")
                }
                let values: [Double]
                switch buffer {
                case .numbers(_, let v): values = v
                case .number(let v): values = [v]
                case .bool(let b): values = [b ? 1 : 0]
                default: throw .invalid("\(path).data.buffer", "expected a nested or flat list of numbers")
                }
                guard values.count == count else {
                    throw .invalid("\(path).data.buffer", "expected \(count) numbers for shape \(Shape.describe(shape)), got \(values.count)")
                }
                let t = Tensor(shape: shape, scalars: values)
                return try finite(dtypeName == "float32" ? .float32(t.cast()) : .float64(t), at: path)
            default:
                throw .invalid("\(path).data.encoding", "expected \"base64\" or \"json\", got \"\(encoding)\"")
            }
        default:
            throw .invalid(path, "expected an array (encoded dict or nested list), got \(value.typeName)")
        }
    }

    private static func finite(_ t: AnyTensor, at path: String) throws(GradError) -> AnyTensor {
        let bad: Int?
        switch t {
        case .float32(let f): bad = f.count == 0 ? nil : FiniteCheck.firstNonFinite(f)
        case .float64(let d): bad = d.count == 0 ? nil : FiniteCheck.firstNonFinite(d)
        }
        if let bad { throw .invalid(path, "non-finite value at flat index \(bad)") }
        return t
    }

    /// Writes one array in the chosen format.
    static func write(_ t: AnyTensor, format: Format, into w: inout JSONWriter) {
        w.beginObject()
        w.key("object_type")
        w.string("array")
        w.key("shape")
        w.beginArray()
        for d in t.shape { w.number(d) }
        w.endArray()
        w.key("dtype")
        w.string(t.dtype.rawValue)
        w.key("data")
        w.beginObject()
        w.key("buffer")
        switch (t, format) {
        case (.float32(let f), .json): w.nested(f)
        case (.float64(let d), .json): w.nested(d)
        case (.float32(let f), .jsonBase64): w.base64String(f)
        case (.float64(let d), .jsonBase64): w.base64String(d)
        }
        w.key("encoding")
        w.string(format == .json ? "json" : "base64")
        w.endObject()
        w.endObject()
    }
}
