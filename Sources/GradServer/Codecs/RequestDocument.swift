import GradCodec
import GradCore
import NIOCore

/// A request body — JSON, or safetensors with the JSON part in `__metadata__["request"]` — with
/// its tensors addressable by dotted path (`inputs.x`, `tangents.t`).
struct RequestDocument: Sendable {
    /// The JSON part.
    var object: JSONObject
    /// Tensors that came as binary (safetensors), by dotted path.
    var binary: [String: AnyTensor] = [:]
    /// Seconds spent decoding JSON tensors so far (they are decoded when first asked for, after the
    /// plan; the `decode` phase reports them, not `compute`).
    let tensorDecoding = DecodeClock()

    /// A running total read and written on the request's compute thread only.
    final class DecodeClock: @unchecked Sendable {
        private(set) var seconds = 0.0
        func add(since start: ContinuousClock.Instant) { seconds += Stopwatch.seconds(ContinuousClock.now - start) }
    }

    /// Parses `body` according to its content type: JSON (default) or `application/octet-stream`.
    static func parse(_ body: ByteBuffer, contentType: String?) throws -> RequestDocument {
        switch mediaType(contentType) {
        // curl -d sends application/x-www-form-urlencoded unless told otherwise; its body is the JSON.
        case nil, "application/json", "text/json", "application/x-www-form-urlencoded":
            let value = try body.withUnsafeReadableBytes { try JSONParser.parse($0) }
            guard case .object(let o) = value else {
                throw GradError.invalid("body", "expected a JSON object, got \(value.typeName)")
            }
            return RequestDocument(object: o)
        case "application/octet-stream":
            // The tensors borrow the body's memory (aligned ones; the others are copied): holding
            // the body's storage keeps it alive, and NIO copies a storage held twice before writing.
            let file = try body.withUnsafeReadableBytesWithStorageManagement { bytes, storage in
                try Safetensors.read(bytes, owner: storage.takeUnretainedValue())
            }
            var object = JSONObject()
            if let text = file.metadata["request"] {
                guard case .object(let o) = try JSONParser.parse(text) else {
                    throw GradError.invalid("__metadata__.request", "expected a JSON object")
                }
                object = o
            }
            return RequestDocument(object: object, binary: file.tensors)
        default:
            throw Problem(
                .unsupportedMediaType, title: "Unsupported media type",
                detail: "send application/json, or application/octet-stream with a safetensors body; got \(contentType ?? "")")
        }
    }

    /// Whether a `Content-Type` announces a safetensors body.
    static func isSafetensors(_ contentType: String?) -> Bool { mediaType(contentType) == "application/octet-stream" }

    /// The media type of a `Content-Type` (lowercased, without parameters).
    static func mediaType(_ contentType: String?) -> String? {
        guard let contentType else { return nil }
        // By hand on the UTF-8 bytes: Foundation's `trimmingCharacters(in:)` took ~30 µs a request.
        let type = contentType.utf8.prefix { $0 != UInt8(ascii: ";") }
        let isBlank = { (c: UInt8) in c == UInt8(ascii: " ") || c == UInt8(ascii: "\t") }
        let trimmed = type.drop(while: isBlank).reversed().drop(while: isBlank).reversed()
        return String(decoding: trimmed, as: UTF8.self).lowercased()
    }

    /// The JSON value at a dotted path.
    func value(_ path: String) -> JSONValue? {
        var v: JSONValue = .object(object)
        for key in path.split(separator: ".") {
            guard case .object(let o) = v, let next = o[String(key)] else { return nil }
            v = next
        }
        return v
    }

    /// Whether anything (JSON or binary) is at `path`.
    func has(_ path: String) -> Bool { value(path) != nil || binary[path] != nil }

    /// The tensor at `path`, from the binary part or decoded from JSON; nil when absent.
    func tensor(_ path: String) throws(GradError) -> AnyTensor? {
        if let t = binary[path] { return t }
        guard let v = value(path) else { return nil }
        let start = ContinuousClock.now
        defer { tensorDecoding.add(since: start) }
        return try TensorDecoder.decode(v, at: path)
    }

    /// The shape of the tensor at `path` without decoding its data; nil when absent.
    func shape(_ path: String) throws(GradError) -> [Int]? {
        if let t = binary[path] { return t.shape }
        guard let v = value(path) else { return nil }
        return try TensorDecoder.shape(of: v, at: path)
    }

    /// The tensor at `path`, which must be present.
    func requiredTensor(_ path: String) throws(GradError) -> AnyTensor {
        guard let t = try tensor(path) else { throw .invalid(path, "required") }
        return t
    }

    /// Refuses top-level fields (and binary tensors) outside `allowed`.
    func checkKnown(_ allowed: Set<String>, nested: [String: Set<String>] = [:]) throws(GradError) {
        var issues: [FieldIssue] = []
        for key in object.keys where !allowed.contains(key) {
            issues.append(FieldIssue(path: key, message: "unknown field; this operation takes \(allowed.sorted().joined(separator: ", "))"))
        }
        for (field, keys) in nested {
            if case .object(let o)? = object[field] {
                for key in o.keys where !keys.contains(key) {
                    issues.append(FieldIssue(path: "\(field).\(key)", message: "unknown field; \(field) takes \(keys.sorted().joined(separator: ", "))"))
                }
            } else if let v = object[field], binary.keys.allSatisfy({ !$0.hasPrefix(field + ".") }) {
                issues.append(FieldIssue(path: field, message: "expected an object, got \(v.typeName)"))
            }
        }
        for name in binary.keys {
            let head = String(name.split(separator: ".").first ?? "")
            let rest = name.dropFirst(head.count + 1)
            let ok = allowed.contains(head) && (nested[head].map { $0.contains(String(rest)) } ?? rest.isEmpty || head == "model")
            if !ok { issues.append(FieldIssue(path: name, message: "unknown tensor name for this operation")) }
        }
        if !issues.isEmpty { throw .invalid(issues) }
    }

    /// A boolean field with a default.
    func bool(_ key: String, default d: Bool) throws(GradError) -> Bool {
        guard let v = object[key] else { return d }
        guard case .bool(let b) = v else { throw .invalid(key, "expected true or false, got \(v.typeName)") }
        return b
    }

    /// A string field restricted to `allowed`, with a default.
    func choice(_ key: String, _ allowed: [String], default d: String) throws(GradError) -> String {
        guard let v = object[key] else { return d }
        guard case .string(let s) = v, allowed.contains(s) else {
            throw .invalid(key, "expected one of \(allowed.map { "\"\($0)\"" }.joined(separator: ", "))")
        }
        return s
    }

    /// A non-negative integer field with a default and bounds.
    func int(_ key: String, default d: Int, range: ClosedRange<Int>) throws(GradError) -> Int {
        guard let v = object[key] else { return d }
        // Int(exactly:) refuses what does not fit (2^63 rounds up from Int64.max as a Double).
        guard case .number(let n) = v, let i = Int(exactly: n), range.contains(i) else {
            throw .invalid(key, "expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return i
    }

    /// An optional finite number field.
    func number(_ key: String) throws(GradError) -> Double? {
        guard let v = object[key] else { return nil }
        guard case .number(let x) = v, x.isFinite else { throw .invalid(key, "expected a finite number, got \(v.typeName)") }
        return x
    }

    /// An optional 1-D array of finite numbers (`time_grid`).
    func numberList(_ key: String) throws(GradError) -> [Double]? {
        guard let v = object[key] else { return nil }
        guard case .numbers(let shape, let values) = v, shape.count == 1 else { throw .invalid(key, "expected an array of numbers, got \(v.typeName)") }
        if let i = values.firstIndex(where: { !$0.isFinite }) { throw .invalid("\(key)[\(i)]", "expected a finite number") }
        return values
    }

    /// A subset of `allowed` given as an array of strings (`wrt`).
    func subset(_ key: String, _ allowed: [String], default d: [String]) throws(GradError) -> Set<String> {
        guard let v = object[key] else { return Set(d) }
        let items: [JSONValue]
        switch v {
        case .array(let a): items = a
        case .numbers(let s, _) where s == [0]: items = []
        default: throw .invalid(key, "expected an array of strings from \(allowed)")
        }
        var out = Set<String>()
        for (i, item) in items.enumerated() {
            guard case .string(let s) = item, allowed.contains(s) else {
                throw .invalid("\(key)[\(i)]", "expected one of \(allowed.map { "\"\($0)\"" }.joined(separator: ", "))")
            }
            out.insert(s)
        }
        if out.isEmpty { throw .invalid(key, "must name at least one of \(allowed)") }
        return out
    }
}
