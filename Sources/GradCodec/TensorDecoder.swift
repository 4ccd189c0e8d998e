import ExtrasBase64
import GradCore

/// Reads a tensor in any of the three wire forms, reporting problems with the field's path.
///
/// 1. nested arrays `[[0.1, 0.2], [0.3, 0.4]]`;
/// 2. `{"shape": [2, 2], "data": [0.1, 0.2, 0.3, 0.4]}`;
/// 3. `{"shape": [2, 2], "dtype": "float32", "encoding": "base64", "data": "…"}` (little-endian, row-major).
public enum TensorDecoder {
    /// Largest element count a decoded tensor may declare (bounded again by the body size).
    public static let maxElements = 1 << 31

    /// Decodes `value` at `path`. Empty, ragged or non-finite tensors are refused.
    public static func decode(_ value: JSONValue, at path: String) throws(GradError) -> AnyTensor {
        switch value {
        case .numbers(let shape, let values):
            try checkShape(shape, at: path)
            try checkFinite(values, at: path)
            return .float64(Tensor(shape: shape, scalars: values))
        case .array(let items):
            throw .invalid([badArrayIssue(items, at: path)])
        case .object(let obj):
            return try decodeObject(obj, at: path)
        default:
            throw .invalid(path, "expected a tensor (nested array of numbers, or an object with shape and data), got \(value.typeName)")
        }
    }

    /// The shape `value` declares, read without decoding its data (a base64 tensor's header is
    /// checked against the limits before its bytes are decoded). Same errors as ``decode(_:at:)``
    /// for the shape itself.
    public static func shape(of value: JSONValue, at path: String) throws(GradError) -> [Int] {
        switch value {
        case .numbers(let shape, _):
            return shape
        case .array(let items):
            throw .invalid([badArrayIssue(items, at: path)])
        case .object(let obj):
            let shape = try extents(obj["shape"], at: path)
            try checkShape(shape, at: "\(path).shape")
            return shape
        default:
            throw .invalid(path, "expected a tensor (nested array of numbers, or an object with shape and data), got \(value.typeName)")
        }
    }

    /// The extents of a tensor object's `shape` field (not yet checked as a whole).
    private static func extents(_ value: JSONValue?, at path: String) throws(GradError) -> [Int] {
        switch value {
        case nil: throw .invalid("\(path).shape", "required")
        case .numbers(let s, let v)? where s.count == 1:
            if let bad = v.firstIndex(where: { $0 < 0 || $0 != $0.rounded() || $0 > Double(maxElements) }) {
                throw .invalid("\(path).shape[\(bad)]", extentMessage(v[bad]))
            }
            return v.map { Int($0) }
        default: throw .invalid("\(path).shape", "expected an array of integers")
        }
    }

    private static func decodeObject(_ obj: JSONObject, at path: String) throws(GradError) -> AnyTensor {
        var issues: [FieldIssue] = []
        for key in obj.keys where !["shape", "data", "dtype", "encoding"].contains(key) {
            issues.append(FieldIssue(path: "\(path).\(key)", message: "unknown field (a tensor object has shape, data, dtype, encoding)"))
        }
        let shape: [Int]
        do { shape = try extents(obj["shape"], at: path) } catch .invalid(let more) {
            throw .invalid(issues + more)
        } catch {
            throw error
        }
        let dtype: DType
        switch obj["dtype"] {
        case nil: dtype = .float64
        case .string(let s)?:
            guard let d = DType(rawValue: s) else {
                issues.append(FieldIssue(path: "\(path).dtype", message: "expected \"float32\" or \"float64\", got \"\(s)\""))
                throw .invalid(issues)
            }
            dtype = d
        case let other?:
            issues.append(FieldIssue(path: "\(path).dtype", message: "expected a string, got \(other.typeName)"))
            throw .invalid(issues)
        }
        let encoding: String?
        switch obj["encoding"] {
        case nil: encoding = nil
        case .string(let s)? where s == "base64": encoding = s
        case let other?:
            issues.append(
                FieldIssue(
                    path: "\(path).encoding",
                    message: "expected \"base64\", got \(other == .string("") ? "\"\"" : other.typeName == "a string" ? "\(other)" : other.typeName)"))
            throw .invalid(issues)
        }
        if !issues.isEmpty { throw .invalid(issues) }
        try checkShape(shape, at: "\(path).shape")
        let count = Shape.elementCount(shape)!
        switch (encoding, obj["data"]) {
        case (_, nil):
            throw .invalid("\(path).data", "required")
        case ("base64", .string(let text)?):
            let expected = count * dtype.byteCount
            let decoded: AnyTensor?
            switch dtype {
            case .float32: decoded = decodeBase64(text, count: count, as: Float.self).map { .float32(Tensor(shape: shape, scalars: $0)) }
            case .float64: decoded = decodeBase64(text, count: count, as: Double.self).map { .float64(Tensor(shape: shape, scalars: $0)) }
            }
            guard let decoded else {
                // Slow path for the message: how many bytes the text really holds, or why it is not base64.
                let got: [UInt8]
                do { got = try Base64.decode(bytes: text.utf8) } catch { throw .invalid("\(path).data", "invalid base64 (\(error))") }
                throw .invalid(
                    "\(path).data", "expected \(expected) bytes (\(count) × \(dtype.rawValue) for shape \(Shape.describe(shape))), got \(got.count)")
            }
            switch decoded {
            case .float32(let t):
                if let bad = FiniteCheck.firstNonFinite(t) { throw .invalid("\(path).data", "non-finite value \(t.scalars[bad]) at flat index \(bad)") }
            case .float64(let t):
                if let bad = FiniteCheck.firstNonFinite(t) { throw .invalid("\(path).data", "non-finite value \(t.scalars[bad]) at flat index \(bad)") }
            }
            return decoded
        case ("base64", let other?):
            throw .invalid("\(path).data", "expected a base64 string, got \(other.typeName)")
        case (nil, .numbers(let s, let values)?) where s.count == 1:
            if values.count != count {
                throw .invalid("\(path).data", "expected \(count) numbers for shape \(Shape.describe(shape)), got \(values.count)")
            }
            try checkFinite(values, at: "\(path).data")
            let t = Tensor(shape: shape, scalars: values)
            return dtype == .float32 ? .float32(t.cast()) : .float64(t)
        case (nil, let other?):
            throw .invalid(
                "\(path).data",
                "expected a flat array of numbers (or set \"encoding\": \"base64\"), got \(other.typeName == "an array" ? "a nested or non-numeric array" : other.typeName)"
            )
        default:
            throw .invalid("\(path).encoding", "unsupported")
        }
    }

    /// Why a shape extent is refused: not a non-negative integer, or above any tensor's size.
    static func extentMessage(_ v: Double) -> String {
        if v >= 0, v == v.rounded(), v.isFinite {
            return "extent \(v >= 9e15 ? "\(v)" : "\(Int(v))") is above the largest tensor this server reads (\(maxElements) elements)"
        }
        return "expected a non-negative integer extent, got \(v)"
    }

    /// Little-endian bytes to a typed tensor, refusing NaN and infinities.
    public static func fromBytes(_ bytes: [UInt8], shape: [Int], dtype: DType, at path: String) throws(GradError) -> AnyTensor {
        let result: Result<AnyTensor, GradError> = bytes.withUnsafeBytes { raw in
            do throws(GradError) { return .success(try fromBytes(raw, shape: shape, dtype: dtype, at: path)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Little-endian bytes to a typed tensor, refusing NaN and infinities.
    ///
    /// With an `owner` that keeps `raw` alive and unchanged, and `raw` aligned for the dtype, the
    /// tensor borrows the bytes where they are (a request body's tensors are computed on in
    /// place); otherwise they are copied (one `memcpy` on little-endian hosts).
    static func fromBytes(_ raw: UnsafeRawBufferPointer, shape: [Int], dtype: DType, at path: String, owner: AnyObject? = nil) throws(GradError) -> AnyTensor {
        switch dtype {
        case .float32: .float32(try typed(raw, shape: shape, at: path, owner: owner))
        case .float64: .float64(try typed(raw, shape: shape, at: path, owner: owner))
        }
    }

    private static func typed<T: BLASScalar>(_ raw: UnsafeRawBufferPointer, shape: [Int], at path: String, owner: AnyObject?) throws(GradError) -> Tensor<T> {
        // x86-64 and arm64 are little-endian, as the wire format is.
        if let owner, let base = raw.baseAddress, Int(bitPattern: base) % MemoryLayout<T>.alignment == 0 {
            let elements = UnsafeBufferPointer(start: base.assumingMemoryBound(to: T.self), count: raw.count / MemoryLayout<T>.size)
            if let bad = FiniteCheck.firstNonFinite(elements) { throw .invalid(path, "non-finite value \(elements[bad]) at flat index \(bad)") }
            return Tensor(shape: shape, borrowing: elements, owner: owner, checkedFinite: true)
        }
        let t = Tensor<T>(shape: shape, scalars: copyScalars(raw, as: T.self))
        if let bad = FiniteCheck.firstNonFinite(t) { throw .invalid(path, "non-finite value \(t.withUnsafeBufferPointer { $0[bad] }) at flat index \(bad)") }
        return t
    }

    /// Decodes base64 text straight into the storage of `count` scalars (no intermediate byte
    /// array); nil when the text is not valid base64 of exactly that many bytes.
    private static func decodeBase64<T: BLASScalar>(_ text: String, count: Int, as: T.Type) -> [T]? {
        var text = text
        let size = count * MemoryLayout<T>.size
        // The decoder wants room for the longest decoding of the text (up to 2 bytes of padding slack).
        guard Base64.decodedLength(bytesCount: text.utf8.count) <= size + 2 else { return nil }
        var ok = false
        let values = text.withUTF8 { input -> [T] in
            [T](unsafeUninitializedCapacity: count + 1) { buf, n in
                let written = buf.withMemoryRebound(to: UInt8.self) { bytes -> Int in
                    var region = MutableSpan(_unsafeElements: bytes)
                    return (try? Base64.decode(bytes: Span(_unsafeElements: input), into: &region)) ?? -1
                }
                ok = written == size
                n = ok ? count : 0
            }
        }
        return ok ? values : nil
    }

    private static func copyScalars<T: BLASScalar>(_ raw: UnsafeRawBufferPointer, as: T.Type) -> [T] {
        let count = raw.count / MemoryLayout<T>.size
        return [T](unsafeUninitializedCapacity: count) { buf, n in
            // x86-64 and arm64 are little-endian, as the wire format is.
            if count > 0 { UnsafeMutableRawPointer(buf.baseAddress!).copyMemory(from: raw.baseAddress!, byteCount: count * MemoryLayout<T>.size) }
            n = count
        }
    }

    private static func checkShape(_ shape: [Int], at path: String) throws(GradError) {
        if shape.isEmpty { throw .invalid(path, "a tensor needs at least one axis") }
        guard let n = Shape.elementCount(shape), n <= maxElements else {
            throw .invalid(path, "shape \(Shape.describe(shape)) declares more than \(maxElements) elements")
        }
        if n == 0 { throw .invalid(path, "shape \(Shape.describe(shape)) has no elements; tensors must not be empty") }
    }

    private static func checkFinite(_ values: [Double], at path: String) throws(GradError) {
        if let bad = values.firstIndex(where: { !$0.isFinite }) {
            throw .invalid(path, "non-finite value at flat index \(bad) (numbers such as 1e999 overflow)")
        }
    }

    /// Explains why a generic array is not a tensor, naming the first offending element by path
    /// (`inputs.x[3]: expected 784 numbers, got 783`).
    static func badArrayIssue(_ items: [JSONValue], at path: String) -> FieldIssue {
        func shapeOf(_ v: JSONValue) -> [Int]? {
            switch v {
            case .number: return []
            case .numbers(let s, _): return s
            default: return nil
            }
        }
        func describe(_ s: [Int]) -> String {
            s.isEmpty ? "a number" : (s.count == 1 ? (s[0] == 1 ? "1 number" : "\(s[0]) numbers") : "an array of shape \(Shape.describe(s))")
        }
        let reference = items.first.flatMap(shapeOf)
        for (i, item) in items.enumerated() {
            let p = "\(path)[\(i)]"
            guard let s = shapeOf(item) else {
                if case .array(let inner) = item { return badArrayIssue(inner, at: p) }
                return FieldIssue(path: p, message: "expected a number, got \(item.typeName)")
            }
            if let reference, s != reference {
                return FieldIssue(path: p, message: "expected \(describe(reference)) like \(path)[0], got \(describe(s))")
            }
        }
        return FieldIssue(path: path, message: "not a rectangular array of numbers")
    }
}
