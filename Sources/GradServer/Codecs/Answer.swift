import GradCodec
import GradCore
import NIOCore

/// How an answer's tensors are written (`output_encoding`).
enum OutputEncoding: String, CaseIterable {
    /// Nested JSON arrays (the default).
    case json
    /// The binary tensor form inside JSON.
    case base64
    /// A safetensors file (`application/octet-stream`).
    case safetensors
}

/// An answer under construction: fields by path, written as JSON or safetensors at the end.
struct Answer: Sendable {
    enum Value: Sendable {
        case tensor(AnyTensor)
        case string(String)
        case number(Double)
        /// `{}` (e.g. `grads.params` of a model without parameters).
        case emptyObject
    }

    var fields: [(path: [String], value: Value)] = []
    /// The body buffer the tensors were computed into, if any (safetensors answers).
    var arena: AnswerArena?

    mutating func add(_ path: String..., tensor: AnyTensor?) {
        if let tensor { fields.append((path, .tensor(tensor))) }
    }

    mutating func add(_ path: String..., string: String) { fields.append((path, .string(string))) }

    mutating func add(_ path: String..., number: Double) { fields.append((path, .number(number))) }

    mutating func addEmptyObject(_ path: String...) { fields.append((path, .emptyObject)) }

    /// Elements in all tensors (checked against the output limit before any is computed).
    var elementCount: Int { fields.reduce(0) { if case .tensor(let t) = $1.value { $0 + (Shape.elementCount(t.shape) ?? 0) } else { $0 } } }

    /// The encoded body and its content type. `trailer` is called once the tensors are written
    /// and its fields are appended (the `timing` object, which includes the encoding time itself;
    /// for safetensors, where the header precedes the data, the final copy of the tensor bytes into
    /// the body comes after it).
    func encode(_ encoding: OutputEncoding, trailer: () -> Answer) -> (body: ByteBuffer, contentType: String) {
        switch encoding {
        case .json, .base64:
            var w = JSONWriter(capacity: 1024 + elementCount * (encoding == .json ? 12 : 6))
            w.beginObject()
            Self.writeMembers(fields[...], depth: 0, into: &w, base64: encoding == .base64)
            // The trailer's members go into the same object, written after the tensors were.
            Self.writeMembers(trailer().fields[...], depth: 0, into: &w, base64: true)
            w.endObject()
            return (ByteBuffer(bytes: w.takeBytes()), "application/json")
        case .safetensors:
            let data = tensorFields
            let metadata = Self.metadata(fields + trailer().fields)
            let header = Safetensors.header(data, metadata: metadata)
            if let body = arena?.body(header: header, tensors: data) { return (body, "application/octet-stream") }
            // One copy of the tensor bytes, straight into the body.
            var body = ByteBufferAllocator().buffer(capacity: header.count + data.reduce(0) { $0 + $1.tensor.byteCount })
            body.writeBytes(header)
            for (_, t) in data { body.writeTensor(t) }
            return (body, "application/octet-stream")
        }
    }

    /// The tensors by dotted name (`grads.params.net.0.weight`), in order: a safetensors body's.
    var tensorFields: [(name: String, tensor: AnyTensor)] {
        fields.compactMap { f in if case .tensor(let t) = f.value { (f.path.joined(separator: "."), t) } else { nil } }
    }

    /// A safetensors body's metadata from the other fields: a top-level string or number as its
    /// text (safetensors metadata values are strings), anything nested as JSON; `{}`s carry no tensor.
    static func metadata(_ fields: [(path: [String], value: Value)]) -> [(String, String)] {
        var meta: [String: [(path: [String], value: Value)]] = [:]
        var order: [String] = []
        for (path, value) in fields {
            switch value {
            case .tensor, .emptyObject: continue
            case .string, .number:
                if meta[path[0]] == nil { order.append(path[0]) }
                meta[path[0], default: []].append((path, value))
            }
        }
        return order.map { key in
            let entries = meta[key] ?? []
            if entries.count == 1, entries[0].path.count == 1 {
                switch entries[0].value {
                case .string(let s): return (key, s)
                case .number(let n):
                    var w = JSONWriter()
                    w.number(n)
                    return (key, String(decoding: w.bytes, as: UTF8.self))
                case .emptyObject, .tensor: return (key, "{}")
                }
            }
            var w = JSONWriter()
            writeObject(entries.map { (Array($0.path.dropFirst()), $0.value) }[...], depth: 0, into: &w, base64: true)
            return (key, String(decoding: w.bytes, as: UTF8.self))
        }
    }

    /// Writes fields as one object, grouping paths by their component at `depth` (first-seen order).
    private static func writeObject(_ fields: ArraySlice<(path: [String], value: Value)>, depth: Int, into w: inout JSONWriter, base64: Bool) {
        w.beginObject()
        writeMembers(fields, depth: depth, into: &w, base64: base64)
        w.endObject()
    }

    /// The members of ``writeObject(_:depth:into:base64:)``, into an object already open.
    private static func writeMembers(_ fields: ArraySlice<(path: [String], value: Value)>, depth: Int, into w: inout JSONWriter, base64: Bool) {
        var order: [String] = []
        var groups: [String: [(path: [String], value: Value)]] = [:]
        for f in fields where depth < f.path.count {
            let key = f.path[depth]
            if groups[key] == nil { order.append(key) }
            groups[key, default: []].append(f)
        }
        for key in order {
            guard let group = groups[key] else { continue }
            w.key(key)
            if group.count == 1, group[0].path.count == depth + 1 {
                switch group[0].value {
                case .tensor(let t): writeTensor(t, into: &w, base64: base64)
                case .string(let s): w.string(s)
                case .number(let n): w.number(n)
                case .emptyObject:
                    w.beginObject()
                    w.endObject()
                }
            } else {
                writeObject(group[...], depth: depth + 1, into: &w, base64: base64)
            }
        }
    }

    private static func writeTensor(_ t: AnyTensor, into w: inout JSONWriter, base64: Bool) {
        switch (t, base64) {
        case (.float32(let f), false): w.nested(f)
        case (.float64(let d), false): w.nested(d)
        case (.float32(let f), true): w.base64(f)
        case (.float64(let d), true): w.base64(d)
        }
    }
}

extension ByteBuffer {
    /// Appends a tensor's little-endian bytes (a safetensors body's data, whole or streamed).
    mutating func writeTensor(_ t: AnyTensor) {
        t.withUnsafeBytes { _ = writeBytes($0) }
    }
}

/// The body buffer of a safetensors answer, lent to the computation before it runs
/// (``ResultArena``): the transforms write the answer's tensors into its data section, and the
/// encoder then writes the file's header in the room left in front of them, so the answer is
/// sent from where it was computed, never copied. The encoder checks that the answer's tensors
/// are exactly the arena's, in order; otherwise (an answer with other tensors, row chunks
/// computed at once, a header that does not fit) it copies as before.
final class AnswerArena: @unchecked Sendable {
    /// Room for the header: 8 bytes of length and the JSON (a forward's or VJP's is ~0.5 kB).
    static let headroom = 4096

    let results: ResultArena
    /// Holds the memory; never written through after its creation (the arena's pointer is).
    private let buffer: ByteBuffer
    /// Whether ``body(header:tensors:)`` gave the body (the answer was not copied).
    private(set) var sentInPlace = false

    /// An arena for `bytes` bytes of answer tensors, or nil when the buffer's memory is not
    /// 16-byte aligned (malloc's always is; the answer is then computed into arrays and copied).
    static func make(bytes: Int) -> AnswerArena? {
        var buffer = ByteBufferAllocator().buffer(capacity: Self.headroom + bytes)
        buffer.moveWriterIndex(to: Self.headroom + bytes)
        // The pointer outlives the closure: `buffer` is kept, uniquely, and never written again.
        let base = buffer.withUnsafeMutableReadableBytes { $0.baseAddress! }
        guard Int(bitPattern: base) % 16 == 0 else { return nil }
        return AnswerArena(buffer: buffer, base: base)
    }

    private init(buffer: ByteBuffer, base: UnsafeMutableRawPointer) {
        self.buffer = buffer
        results = ResultArena(base: base + Self.headroom, capacity: buffer.readableBytes - Self.headroom, owner: Self.Keeper(buffer))
    }

    /// Keeps the buffer's storage alive while a tensor borrows it.
    private final class Keeper: @unchecked Sendable {
        let buffer: ByteBuffer
        init(_ buffer: ByteBuffer) { self.buffer = buffer }
    }

    /// The whole safetensors body without copying the tensors, or nil when `tensors` are not
    /// exactly the arena's (all of it, in order) or `header` does not fit in front.
    func body(header: [UInt8], tensors: [(name: String, tensor: AnyTensor)]) -> ByteBuffer? {
        var cursor = results.base
        for (_, t) in tensors {
            let (start, bytes) = t.withUnsafeBytes { ($0.baseAddress, $0.count) }
            guard start == UnsafeRawPointer(cursor) else { return nil }
            cursor += bytes
        }
        guard cursor == results.base + results.used, header.count <= Self.headroom else { return nil }
        let start = Self.headroom - header.count
        header.withUnsafeBytes { (results.base - header.count).copyMemory(from: $0.baseAddress!, byteCount: header.count) }
        sentInPlace = true
        return buffer.getSlice(at: start, length: header.count + results.used)
    }
}
