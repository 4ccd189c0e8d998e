// One file on purpose, just over the ~400-line guideline: the scanner, its numeric fast path and
// its allocation bounds are one state machine; split, each part would need the others' internals.
#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Why a body is not JSON: the byte offset and what was expected there.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Byte offset of the problem in the body.
    public var offset: Int
    /// What is wrong.
    public var message: String
    /// The offset and what was expected there.
    public var description: String { "invalid JSON at byte \(offset): \(message)" }
}

/// A byte-level JSON parser that reads numbers straight into contiguous `Double` buffers.
///
/// Hand-written because Foundation's `JSONDecoder` is ~25× slower on 10⁶ floats (it boxes every
/// number). Strict RFC 8259: `NaN`, `Infinity`, trailing commas, comments and duplicate keys are
/// errors. Numbers are correctly rounded (Clinger's fast path, `strtod` otherwise).
///
/// Bounded in what it allocates: a number in a numeric array becomes 8 bytes (at least 2 in the
/// text), and every other value (an object, a string, `[]`, `null`…) costs a boxed node of some
/// 50-90 bytes, so at most ``maxNodes(forBytes:)`` of them are accepted — a body of `[{},{},…]`
/// cannot turn 256 MB into gigabytes. Together: a document never takes more than about 5× its
/// size plus ~1.5 MB once parsed, which the server reserves before reading a body.
public struct JSONParser {
    private let bytes: UnsafeRawBufferPointer
    private var pos = 0
    private var depth = 0
    private let maxDepth = 256
    private var nodes = 0
    private let maxNodes: Int

    /// Values outside numeric arrays a document of `count` bytes may hold: a fixed allowance for
    /// small documents (a safetensors header of some 2700 tensors) plus one per 16 bytes.
    public static func maxNodes(forBytes count: Int) -> Int { 16_384 + count / 16 }

    /// Parses one JSON document from `bytes`.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONParseError) -> JSONValue {
        var p = JSONParser(bytes: bytes)
        p.skipWhitespace()
        let v = try p.parseValue()
        p.skipWhitespace()
        if p.pos != bytes.count { throw p.error("unexpected data after the JSON value") }
        return v
    }

    /// Parses one JSON document from a byte array.
    public static func parse(_ bytes: [UInt8]) throws(JSONParseError) -> JSONValue {
        do {
            return try bytes.withUnsafeBytes { (b) throws(JSONParseError) -> JSONValue in try parse(b) }
        } catch let e as JSONParseError {
            throw e
        } catch {
            fatalError("unreachable")
        }
    }

    /// Parses one JSON document from a string.
    public static func parse(_ text: String) throws(JSONParseError) -> JSONValue { try parse(Array(text.utf8)) }

    private init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
        maxNodes = Self.maxNodes(forBytes: bytes.count)
    }

    private func error(_ message: String) -> JSONParseError { JSONParseError(offset: pos, message: message) }

    @inline(__always) private var current: UInt8? { pos < bytes.count ? bytes[pos] : nil }

    @inline(__always) private mutating func skipWhitespace() {
        while pos < bytes.count {
            let c = bytes[pos]
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { pos += 1 } else { break }
        }
    }

    private mutating func parseValue() throws(JSONParseError) -> JSONValue {
        guard let c = current else { throw error("unexpected end of input") }
        nodes += 1
        if nodes > maxNodes {
            throw error("more than \(maxNodes) values outside arrays of numbers in a \(bytes.count)-byte document; tensors are sent as arrays of numbers")
        }
        switch c {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["):
            let start = pos
            if let (shape, values) = tryNumericArray() { return .numbers(shape: shape, values: values) }
            pos = start
            return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return .number(try parseNumber())
        case UInt8(ascii: "N"), UInt8(ascii: "I"):
            throw error("NaN and Infinity are not JSON numbers")
        default:
            throw error("unexpected character '\(Character(Unicode.Scalar(c)))'")
        }
    }

    private mutating func expectLiteral(_ word: StaticString) throws(JSONParseError) {
        let n = word.utf8CodeUnitCount
        guard pos + n <= bytes.count else { throw error("unexpected end of input") }
        let w = word.utf8Start
        for i in 0..<n where bytes[pos + i] != w[i] { throw error("invalid literal") }
        pos += n
    }

    private mutating func enter() throws(JSONParseError) {
        depth += 1
        if depth > maxDepth { throw error("nesting deeper than \(maxDepth) levels") }
    }

    private mutating func parseObject() throws(JSONParseError) -> JSONValue {
        try enter()
        pos += 1
        var entries: [(key: String, value: JSONValue)] = []
        var seen = Set<String>()
        skipWhitespace()
        if current == UInt8(ascii: "}") {
            pos += 1
            depth -= 1
            return .object(JSONObject())
        }
        while true {
            skipWhitespace()
            guard current == UInt8(ascii: "\"") else { throw error("expected a string key") }
            let keyOffset = pos
            let key = try parseString()
            if !seen.insert(key).inserted { throw JSONParseError(offset: keyOffset, message: "duplicate key \"\(key)\"") }
            skipWhitespace()
            guard current == UInt8(ascii: ":") else { throw error("expected ':' after a key") }
            pos += 1
            skipWhitespace()
            entries.append((key, try parseValue()))
            if try endOfMember(UInt8(ascii: "}"), in: "an object") { return .object(JSONObject(entries)) }
        }
    }

    /// After a member of an object or array: `,` continues (false); `closing` ends the container (true).
    @inline(__always)
    private mutating func endOfMember(_ closing: UInt8, in container: String) throws(JSONParseError) -> Bool {
        skipWhitespace()
        if current == UInt8(ascii: ",") {
            pos += 1
            return false
        }
        guard current == closing else { throw error("expected ',' or '\(Character(Unicode.Scalar(closing)))' in \(container)") }
        pos += 1
        depth -= 1
        return true
    }

    private mutating func parseArray() throws(JSONParseError) -> JSONValue {
        try enter()
        pos += 1
        var items: [JSONValue] = []
        skipWhitespace()
        if current == UInt8(ascii: "]") {
            pos += 1
            depth -= 1
            return .array(items)
        }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            if try endOfMember(UInt8(ascii: "]"), in: "an array") { return .array(items) }
        }
    }

    // MARK: - Numeric arrays

    /// Reads a rectangular nested array of numbers into one buffer; nil (position undefined) when
    /// the array holds anything else or is ragged, in which case the caller parses it generically.
    private mutating func tryNumericArray() -> (shape: [Int], values: [Double])? {
        var shape: [Int] = []  // extent at each depth (-1 until the first array at that depth closes)
        var rank = -1  // depth at which numbers sit, once known
        var values: [Double] = []
        var counts: [Int] = []  // elements seen in the open array at each depth
        var d = -1
        while true {
            skipWhitespace()
            guard let c = current else { return nil }
            if c == UInt8(ascii: "[") {
                pos += 1
                d += 1
                if d >= 32 || (rank >= 0 && d >= rank) { return nil }
                if counts.count <= d { counts.append(0) } else { counts[d] = 0 }
                skipWhitespace()
                if current == UInt8(ascii: "]") {
                    // An empty array is only a tensor at the top: `[]`.
                    if d != 0 { return nil }
                    pos += 1
                    return ([0], [])
                }
                continue
            }
            // A number at depth d.
            if rank < 0 {
                rank = d + 1
                shape = [Int](repeating: -1, count: rank)
            } else if d != rank - 1 {
                return nil
            }
            guard c == UInt8(ascii: "-") || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) else { return nil }
            guard let v = try? parseNumber() else { return nil }
            values.append(v)
            counts[d] += 1
            // Close as many arrays as end here.
            while true {
                skipWhitespace()
                guard let c2 = current else { return nil }
                if c2 == UInt8(ascii: ",") {
                    pos += 1
                    skipWhitespace()
                    // After a comma at depth d we need a number (leaf depth) or an array (inner depth).
                    if d == rank - 1 { if current == UInt8(ascii: "[") { return nil } } else if current != UInt8(ascii: "[") { return nil }
                    break
                }
                guard c2 == UInt8(ascii: "]") else { return nil }
                pos += 1
                if shape[d] < 0 { shape[d] = counts[d] } else if shape[d] != counts[d] { return nil }
                if d == 0 { return (shape, values) }
                d -= 1
                counts[d] += 1
            }
        }
    }

    // MARK: - Numbers

    private static let exactPowers: [Double] = (0...22).map { e in
        var p = 1.0
        for _ in 0..<e { p *= 10 }
        return p
    }

    /// Strict JSON number grammar; correctly rounded to the nearest `Double`.
    private mutating func parseNumber() throws(JSONParseError) -> Double {
        let start = pos
        var negative = false
        if current == UInt8(ascii: "-") {
            negative = true
            pos += 1
        }
        var mantissa: UInt64 = 0
        var digits = 0  // significant digits kept in mantissa
        var dropped = 0  // integer digits beyond 19 (scale)
        var fracDigits = 0
        guard let first = current, first >= UInt8(ascii: "0"), first <= UInt8(ascii: "9") else { throw error("expected a digit") }
        if first == UInt8(ascii: "0") {
            pos += 1
            if let c = current, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") { throw error("leading zeros are not allowed") }
        } else {
            while let c = current, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") {
                if digits < 19 {
                    mantissa = mantissa * 10 + UInt64(c - UInt8(ascii: "0"))
                    if mantissa != 0 { digits += 1 }
                } else {
                    dropped += 1
                }
                pos += 1
            }
        }
        var exact = true
        if current == UInt8(ascii: ".") {
            pos += 1
            guard let c = current, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") else { throw error("expected a digit after '.'") }
            while let c = current, c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") {
                if digits < 19 {
                    mantissa = mantissa * 10 + UInt64(c - UInt8(ascii: "0"))
                    if mantissa != 0 { digits += 1 }
                    fracDigits += 1
                } else if c != UInt8(ascii: "0") {
                    exact = false
                }
                pos += 1
            }
        }
        var exp10 = 0
        if let c = current, c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
            pos += 1
            var expNegative = false
            if current == UInt8(ascii: "+") || current == UInt8(ascii: "-") {
                expNegative = current == UInt8(ascii: "-")
                pos += 1
            }
            guard let c2 = current, c2 >= UInt8(ascii: "0"), c2 <= UInt8(ascii: "9") else { throw error("expected a digit in the exponent") }
            while let c3 = current, c3 >= UInt8(ascii: "0"), c3 <= UInt8(ascii: "9") {
                if exp10 < 100_000 { exp10 = exp10 * 10 + Int(c3 - UInt8(ascii: "0")) }
                pos += 1
            }
            if expNegative { exp10 = -exp10 }
        }
        let scale = exp10 + dropped - fracDigits
        if exact, dropped == 0, mantissa < (1 << 53), scale >= -22, scale <= 22 {
            // Clinger's fast path: both operands exact, one correctly rounded operation.
            var v = Double(mantissa)
            v = scale < 0 ? v / Self.exactPowers[-scale] : v * Self.exactPowers[scale]
            return negative ? -v : v
        }
        return slowNumber(from: start, to: pos)
    }

    /// `strtod` on a NUL-terminated copy: correctly rounded for any length.
    private func slowNumber(from start: Int, to end: Int) -> Double {
        var buf = [CChar](repeating: 0, count: end - start + 1)
        for i in start..<end { buf[i - start] = CChar(bitPattern: bytes[i]) }
        return strtod(buf, nil)
    }

    // MARK: - Strings

    private mutating func parseString() throws(JSONParseError) -> String {
        pos += 1
        let start = pos
        // Fast scan, 8 bytes at a time (base64 tensors are megabyte-long strings): stop at the
        // first word holding a quote, a backslash or a control character, then go byte by byte.
        pos = Self.skipPlainBytes(bytes, from: pos)
        while let c = current, c != UInt8(ascii: "\""), c != UInt8(ascii: "\\") {
            if c < 0x20 { throw error("control character in a string") }
            pos += 1
        }
        guard let c = current else { throw error("unterminated string") }
        if c == UInt8(ascii: "\"") {
            let s = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
            pos += 1
            return s
        }
        var out = Array(bytes[start..<pos])
        while true {
            guard let c = current else { throw error("unterminated string") }
            pos += 1
            if c == UInt8(ascii: "\"") { break }
            if c < 0x20 { throw error("control character in a string") }
            if c != UInt8(ascii: "\\") {
                out.append(c)
                continue
            }
            guard let e = current else { throw error("unterminated escape") }
            pos += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800..<0xDC00).contains(scalar), current == UInt8(ascii: "\\"), pos + 1 < bytes.count, bytes[pos + 1] == UInt8(ascii: "u") {
                    pos += 2
                    let low = try hex4()
                    guard (0xDC00..<0xE000).contains(low) else { throw error("invalid surrogate pair") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let u = Unicode.Scalar(scalar) else { throw error("invalid \\u escape") }
                out.append(contentsOf: Array(String(Character(u)).utf8))
            default: throw error("invalid escape")
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The index of the first byte at or after `start` that is `"`, `\\` or below 0x20 (or a
    /// nearby earlier one; the caller rescans byte by byte from there).
    @inline(__always)
    private static func skipPlainBytes(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int {
        var i = start
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        // SWAR "has byte less than n" and "has byte equal to c" (Hacker's Delight 6-1).
        @inline(__always) func hasLess(_ x: UInt64, _ n: UInt64) -> Bool { ((x &- ones &* n) & ~x & highs) != 0 }
        @inline(__always) func hasByte(_ x: UInt64, _ c: UInt64) -> Bool { hasLess(x ^ (ones &* c), 1) }
        while i + 8 <= bytes.count {
            let w = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            if hasLess(w, 0x20) || hasByte(w, 0x22) || hasByte(w, 0x5C) { break }
            i += 8
        }
        return i
    }

    private mutating func hex4() throws(JSONParseError) -> UInt32 {
        guard pos + 4 <= bytes.count else { throw error("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw error("invalid hex digit in \\u escape")
            }
            v = v * 16 + d
            pos += 1
        }
        return v
    }
}
