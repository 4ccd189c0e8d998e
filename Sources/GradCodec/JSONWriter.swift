import ExtrasBase64
import GradCore

/// Writes JSON straight into a byte buffer; numbers use the shortest representation that
/// round-trips to the same `Float`/`Double`.
public struct JSONWriter {
    /// The bytes written so far.
    public private(set) var bytes: [UInt8] = []
    private var needsComma: [Bool] = [false]

    /// Creates an empty writer, reserving `capacity` bytes.
    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    private mutating func separate() {
        if needsComma[needsComma.count - 1] { bytes.append(UInt8(ascii: ",")) }
        needsComma[needsComma.count - 1] = true
    }

    /// The bytes written, leaving the writer empty (no copy).
    public mutating func takeBytes() -> [UInt8] {
        let taken = bytes
        bytes = []
        needsComma = [false]
        return taken
    }

    /// `{`
    public mutating func beginObject() {
        separate()
        bytes.append(UInt8(ascii: "{"))
        needsComma.append(false)
    }

    /// `}`
    public mutating func endObject() {
        needsComma.removeLast()
        bytes.append(UInt8(ascii: "}"))
    }

    /// `[`
    public mutating func beginArray() {
        separate()
        bytes.append(UInt8(ascii: "["))
        needsComma.append(false)
    }

    /// `]`
    public mutating func endArray() {
        needsComma.removeLast()
        bytes.append(UInt8(ascii: "]"))
    }

    /// `"key":` (the next value is the key's value).
    public mutating func key(_ k: String) {
        separate()
        writeString(k)
        bytes.append(UInt8(ascii: ":"))
        needsComma[needsComma.count - 1] = false
    }

    /// A string value.
    public mutating func string(_ s: String) {
        separate()
        writeString(s)
    }

    /// A number (finite; non-finite values are written as `null`).
    public mutating func number<S: BinaryFloatingPoint & LosslessStringConvertible>(_ v: S) {
        separate()
        writeNumber(v)
    }

    /// An integer.
    public mutating func number(_ v: Int) {
        separate()
        bytes.append(contentsOf: String(v).utf8)
    }

    /// `true` / `false`.
    public mutating func bool(_ v: Bool) {
        separate()
        bytes.append(contentsOf: (v ? "true" : "false").utf8)
    }

    /// `null`.
    public mutating func null() {
        separate()
        bytes.append(contentsOf: "null".utf8)
    }

    /// Raw, already valid JSON.
    public mutating func raw(_ json: [UInt8]) {
        separate()
        bytes.append(contentsOf: json)
    }

    /// A tensor as nested arrays (the default output form).
    public mutating func nested<S: BLASScalar & LosslessStringConvertible>(_ t: Tensor<S>) {
        separate()
        if t.shape.isEmpty || t.count == 0 {
            bytes.append(contentsOf: "[]".utf8)
            return
        }
        bytes.reserveCapacity(bytes.count + t.count * 12)
        t.withUnsafeBufferPointer { p in
            var i = 0
            func level(_ axis: Int) {
                bytes.append(UInt8(ascii: "["))
                let n = t.shape[axis]
                for j in 0..<n {
                    if j > 0 { bytes.append(UInt8(ascii: ",")) }
                    if axis == t.shape.count - 1 {
                        writeNumber(p[i])
                        i += 1
                    } else {
                        level(axis + 1)
                    }
                }
                bytes.append(UInt8(ascii: "]"))
            }
            level(0)
        }
    }

    /// A tensor in the binary form `{"shape", "dtype", "encoding": "base64", "data"}`.
    public mutating func base64<S: BLASScalar>(_ t: Tensor<S>) {
        beginObject()
        key("shape")
        beginArray()
        for d in t.shape { number(d) }
        endArray()
        key("dtype")
        string(S.dtype.rawValue)
        key("encoding")
        string("base64")
        key("data")
        base64String(t)
        endObject()
    }

    /// The elements' little-endian bytes as one base64 string value.
    public mutating func base64String<S: BLASScalar>(_ t: Tensor<S>) {
        separate()
        bytes.append(UInt8(ascii: "\""))
        // Encode straight into the output (no intermediate array): grow it by the encoded length,
        // then let the encoder fill that region.
        let n = Base64.encodedLength(bytesCount: t.count * MemoryLayout<S>.size)
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: n))
        t.withUnsafeBytes { raw in
            bytes.withUnsafeMutableBufferPointer { out in
                var region = MutableSpan(_unsafeElements: UnsafeMutableBufferPointer(rebasing: out[start..<(start + n)]))
                raw.withMemoryRebound(to: UInt8.self) { _ = Base64.encode(bytes: Span(_unsafeElements: $0), into: &region) }
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    private mutating func writeNumber<S: BinaryFloatingPoint & LosslessStringConvertible>(_ v: S) {
        guard v.isFinite else {
            bytes.append(contentsOf: "null".utf8)
            return
        }
        if v == v.rounded(), abs(v) < 1e15 {
            // Integral values: "3" instead of "3.0" (still exact).
            bytes.append(contentsOf: String(Int64(v)).utf8)
            if v == 0, v.sign == .minus { bytes.insert(UInt8(ascii: "-"), at: bytes.count - 1) }
            return
        }
        bytes.append(contentsOf: v.description.utf8)
    }

    private mutating func writeString(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""): bytes.append(contentsOf: "\\\"".utf8)
            case UInt8(ascii: "\\"): bytes.append(contentsOf: "\\\\".utf8)
            case 0x0A: bytes.append(contentsOf: "\\n".utf8)
            case 0x0D: bytes.append(contentsOf: "\\r".utf8)
            case 0x09: bytes.append(contentsOf: "\\t".utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes.append(contentsOf: "\\u00".utf8)
                bytes.append(hex[Int(c >> 4)])
                bytes.append(hex[Int(c & 15)])
            default: bytes.append(c)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}
