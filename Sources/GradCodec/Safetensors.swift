import GradCore

/// The safetensors container (8-byte little-endian header length, JSON header, raw data),
/// used for binary request and answer bodies.
public enum Safetensors {
    /// A parsed file: tensors by name and the `__metadata__` strings.
    public struct File: Sendable {
        /// The tensors by name.
        public var tensors: [String: AnyTensor]
        /// The `__metadata__` entries.
        public var metadata: [String: String]
    }

    /// Largest header accepted (the format's own limit is 100 MB).
    static let maxHeader = 100 << 20

    /// Reads a safetensors body; every problem is a 422-style issue at `body`.
    ///
    /// With an `owner` that keeps `bytes` alive and unchanged while the tensors are referenced,
    /// each tensor whose data is aligned for its dtype borrows it in place instead of copying
    /// (``Tensor/init(shape:borrowing:owner:)``); without one, every tensor is a copy.
    public static func read(_ bytes: UnsafeRawBufferPointer, owner: AnyObject? = nil) throws(GradError) -> File {
        guard bytes.count >= 8 else { throw .invalid("body", "a safetensors body starts with an 8-byte header length; got \(bytes.count) bytes") }
        let n = Int(min(UInt64(littleEndian: bytes.loadUnaligned(as: UInt64.self)), UInt64(Int.max - 16)))
        guard n <= maxHeader, 8 + n <= bytes.count else {
            throw .invalid("body", "safetensors header length \(n) does not fit in a \(bytes.count)-byte body")
        }
        let header: JSONValue
        do { header = try JSONParser.parse(UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + n)])) } catch {
            throw .invalid("body", "safetensors header is not JSON: \(error)")
        }
        guard case .object(let o) = header else { throw .invalid("body", "safetensors header must be a JSON object") }
        let data = UnsafeRawBufferPointer(rebasing: bytes[(8 + n)...])
        var file = File(tensors: [:], metadata: [:])
        var issues: [FieldIssue] = []
        var entries: [Entry] = []
        // Runs `step` for the tensor `name`, keeping its issues with the others'.
        func collecting(_ name: String, _ step: () throws(GradError) -> Void) {
            do throws(GradError) {
                try step()
            } catch .invalid(let more) {
                issues += more
            } catch {
                issues.append(FieldIssue(path: name, message: "\(error)"))
            }
        }
        for (name, v) in o.entries {
            if name == "__metadata__" {
                guard case .object(let m) = v else {
                    issues.append(FieldIssue(path: "__metadata__", message: "must be an object of strings"))
                    continue
                }
                for (k, mv) in m.entries {
                    if case .string(let s) = mv {
                        file.metadata[k] = s
                    } else {
                        issues.append(FieldIssue(path: "__metadata__.\(k)", message: "metadata values are strings"))
                    }
                }
                continue
            }
            collecting(name) { () throws(GradError) in entries.append(try entry(name, v, data)) }
        }
        // No two tensors may share bytes (the format's own rule): each byte is then decoded (checked,
        // or copied when misaligned) at most once, so the work and memory of decoding are bounded by
        // the body. Overlapping ranges would let a few megabytes name the same bytes thousands of times.
        let ordered = entries.sorted { ($0.begin, $0.end) < ($1.begin, $1.end) }
        for (previous, next) in zip(ordered, ordered.dropFirst()) where next.begin < previous.end {
            issues.append(
                FieldIssue(
                    path: "\(next.name).data_offsets",
                    message:
                        "[\(next.begin), \(next.end)] overlaps the bytes of \(previous.name) [\(previous.begin), \(previous.end)]; tensors may not share data"))
        }
        if !issues.isEmpty { throw .invalid(capped(issues)) }
        for e in entries {
            collecting(e.name) { () throws(GradError) in
                file.tensors[e.name] = try TensorDecoder.fromBytes(
                    UnsafeRawBufferPointer(rebasing: data[e.begin..<e.end]), shape: e.shape, dtype: e.dtype, at: e.name, owner: owner)
            }
        }
        if !issues.isEmpty { throw .invalid(capped(issues)) }
        return file
    }

    /// At most 100 issues and a count of the others: a 100 MB header of bad entries must not
    /// answer with millions of them.
    static func capped(_ issues: [FieldIssue]) -> [FieldIssue] {
        guard issues.count > 100 else { return issues }
        return Array(issues.prefix(100)) + [FieldIssue(path: "body", message: "and \(issues.count - 100) more issues like these")]
    }

    /// A tensor's header entry, checked against the data section but not yet decoded.
    private struct Entry {
        let name: String
        let dtype: DType
        let shape: [Int]
        let begin: Int
        let end: Int
    }

    private static func entry(_ name: String, _ v: JSONValue, _ data: UnsafeRawBufferPointer) throws(GradError) -> Entry {
        guard case .object(let t) = v, case .string(let dt)? = t["dtype"], case .numbers(let ss, let shapeD)? = t["shape"] ?? .numbers(shape: [0], values: []),
            ss.count == 1, case .numbers(let os, let offs)? = t["data_offsets"], os == [2]
        else { throw .invalid(name, "expected {\"dtype\", \"shape\", \"data_offsets\": [begin, end]}") }
        let dtype: DType
        switch dt {
        case "F32": dtype = .float32
        case "F64": dtype = .float64
        default: throw .invalid("\(name).dtype", "expected F32 or F64, got \(dt)")
        }
        guard shapeD.allSatisfy({ $0 >= 0 && $0 == $0.rounded() && $0 < 1e15 }), offs.allSatisfy({ $0 >= 0 && $0 == $0.rounded() && $0 < 1e18 }) else {
            throw .invalid(name, "shape and data_offsets must be non-negative integers")
        }
        let shape = shapeD.map { Int($0) }
        let (begin, end) = (Int(offs[0]), Int(offs[1]))
        guard let count = Shape.elementCount(shape), count > 0, !shape.isEmpty else {
            throw .invalid("\(name).shape", "tensors must be non-empty, got \(Shape.describe(shape))")
        }
        guard begin <= end, end <= data.count else {
            throw .invalid("\(name).data_offsets", "[\(begin), \(end)] lies outside the \(data.count)-byte data section")
        }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: dtype.byteCount)
        guard !overflow, end - begin == bytes else {
            throw .invalid("\(name).data_offsets", "expected \(count) × \(dtype.byteCount) bytes for \(dt) \(Shape.describe(shape)), got \(end - begin)")
        }
        return Entry(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
    }

    /// The data section for `tensors`: their bytes, in order.
    public static func payload(_ tensors: [(name: String, tensor: AnyTensor)]) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(tensors.reduce(0) { $0 + (Shape.elementCount($1.tensor.shape) ?? 0) * $1.tensor.dtype.byteCount })
        for (_, t) in tensors { t.withUnsafeBytes { out.append(contentsOf: $0) } }
        return out
    }

    /// Writes tensors (in order) and metadata as a safetensors file.
    public static func write(_ tensors: [(name: String, tensor: AnyTensor)], metadata: [(String, String)]) -> [UInt8] {
        header(tensors, metadata: metadata) + payload(tensors)
    }

    /// The file up to its data section: the 8-byte length and the JSON header (padded to 8 bytes).
    /// The data section is the tensors' bytes in the same order (``payload(_:)``).
    public static func header(_ tensors: [(name: String, tensor: AnyTensor)], metadata: [(String, String)]) -> [UInt8] {
        header(entries: tensors.map { (name: $0.name, dtype: $0.tensor.dtype, shape: $0.tensor.shape) }, metadata: metadata)
    }

    /// ``header(_:metadata:)`` from the tensors' names, dtypes and shapes alone: a streamed answer
    /// writes its header before its tensors are computed.
    public static func header(entries tensors: [(name: String, dtype: DType, shape: [Int])], metadata: [(String, String)]) -> [UInt8] {
        var offsets: [(Int, Int)] = []
        var total = 0
        for t in tensors {
            let n = Shape.elementCount(t.shape)! * t.dtype.byteCount
            offsets.append((total, total + n))
            total += n
        }
        var h = JSONWriter()
        h.beginObject()
        if !metadata.isEmpty {
            h.key("__metadata__")
            h.beginObject()
            for (k, v) in metadata {
                h.key(k)
                h.string(v)
            }
            h.endObject()
        }
        for (t, (b, e)) in zip(tensors, offsets) {
            h.key(t.name)
            h.beginObject()
            h.key("dtype")
            h.string(t.dtype == .float32 ? "F32" : "F64")
            h.key("shape")
            h.beginArray()
            for d in t.shape { h.number(d) }
            h.endArray()
            h.key("data_offsets")
            h.beginArray()
            h.number(b)
            h.number(e)
            h.endArray()
            h.endObject()
        }
        h.endObject()
        var json = h.takeBytes()
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var out = withUnsafeBytes(of: UInt64(json.count).littleEndian) { Array($0) }
        out += json
        return out
    }
}
