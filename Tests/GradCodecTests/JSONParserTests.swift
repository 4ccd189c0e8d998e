import GradCodec
import GradCore
import Testing

@Suite("JSON parser")
struct JSONParserTests {
    @Test("numbers round-trip exactly through the writer and the parser")
    func roundTrip() throws {
        var state: UInt64 = 1
        var doubles: [Double] = [0, -0.0, 1, -1, 0.1, 1e-300, 5e-324, 1.7976931348623157e308, 123456789012345678, 2.2250738585072014e-308]
        var floats: [Float] = [0.1, 1e-45, 3.4028235e38, 16_777_217, -2.5e-8]
        for _ in 0..<5000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let d = Double(bitPattern: state)
            if d.isFinite { doubles.append(d) }
            let f = Float(bitPattern: UInt32(truncatingIfNeeded: state >> 17))
            if f.isFinite { floats.append(f) }
        }
        var w = JSONWriter()
        w.nested(Tensor<Double>(shape: [doubles.count], scalars: doubles))
        guard case .numbers(let shape, let parsed) = try JSONParser.parse(w.bytes) else { Issue.record("not numbers"); return }
        #expect(shape == [doubles.count])
        for (a, b) in zip(parsed, doubles) { #expect(a.bitPattern == b.bitPattern, "\(b) came back as \(a)") }

        var wf = JSONWriter()
        wf.nested(Tensor<Float>(shape: [floats.count], scalars: floats))
        guard case .numbers(_, let pf) = try JSONParser.parse(wf.bytes) else { Issue.record("not numbers"); return }
        for (a, b) in zip(pf, floats) { #expect(Float(a) == b, "\(b) came back as \(Float(a))") }
    }

    @Test("nested arrays become one buffer with a shape")
    func shapes() throws {
        #expect(try JSONParser.parse("[[1, 2, 3], [4, 5, 6]]") == .numbers(shape: [2, 3], values: [1, 2, 3, 4, 5, 6]))
        #expect(try JSONParser.parse("[[[1], [2]]]") == .numbers(shape: [1, 2, 1], values: [1, 2]))
        #expect(try JSONParser.parse("[]") == .numbers(shape: [0], values: []))
        // Ragged and mixed arrays stay generic, so the tensor decoder can name the bad element.
        guard case .array = try JSONParser.parse("[[1, 2], [3]]") else { Issue.record("ragged became numbers"); return }
        guard case .array = try JSONParser.parse("[[1, 2], 3]") else { Issue.record("mixed became numbers"); return }
        guard case .array = try JSONParser.parse(#"[1, "a"]"#) else { Issue.record("strings became numbers"); return }
    }

    static let invalid = [
        "", "{", "[1, 2", "[1,]", "{\"a\": 1,}", "NaN", "[NaN]", "[Infinity]", "-Infinity", "[01]", "[1.]", "[.5]", "[1e]", "[+1]",
        "{\"a\": 1, \"a\": 2}", "\"\u{01}\"", "\"\\x\"", "tru", "nul", "{1: 2}", "[1] [2]",
        String(repeating: "[", count: 300) + String(repeating: "]", count: 300),
    ]

    @Test("invalid JSON is an error, never a crash", arguments: invalid)
    func rejects(text: String) {
        #expect(throws: JSONParseError.self) { try JSONParser.parse(text) }
    }

    @Test func strings() throws {
        #expect(try JSONParser.parse(#""a\"b\\c\/\n\u00e9\ud83d\ude00""#) == .string("a\"b\\c/\né😀"))
        var w = JSONWriter()
        w.string("tab\there \"quoted\" \u{01}")
        #expect(try JSONParser.parse(w.bytes) == .string("tab\there \"quoted\" \u{01}"))
    }

    @Test("strings with escapes or control characters at every offset of the word-at-a-time scan")
    func stringOffsets() throws {
        for n in 0..<20 {
            let pad = String(repeating: "ab", count: n)
            #expect(try JSONParser.parse("\"\(pad)\\n\(pad)\"") == .string("\(pad)\n\(pad)"))
            #expect(try JSONParser.parse("\"\(pad)é\(pad)\"") == .string("\(pad)é\(pad)"))
            #expect(throws: JSONParseError.self) { try JSONParser.parse("\"\(pad)\u{09}\(pad)\"") }
            #expect(throws: JSONParseError.self) { try JSONParser.parse("\"\(pad)") }
        }
    }

    @Test("1e999 parses to infinity and the tensor decoder refuses it")
    func overflow() throws {
        let v = try JSONParser.parse("[1e999, 1]")
        #expect(throws: GradError.self) { try TensorDecoder.decode(v, at: "x") }
    }
}

@Suite("Tensor forms")
struct TensorFormTests {
    @Test func threeForms() throws {
        let nested = try TensorDecoder.decode(try JSONParser.parse("[[1.5, -2], [3, 4]]"), at: "x")
        let flat = try TensorDecoder.decode(try JSONParser.parse(#"{"shape": [2, 2], "data": [1.5, -2, 3, 4]}"#), at: "x")
        var w = JSONWriter()
        w.base64(Tensor<Float>(shape: [2, 2], scalars: [1.5, -2, 3, 4]))
        let binary = try TensorDecoder.decode(try JSONParser.parse(w.bytes), at: "x")
        #expect(
            nested.cast(to: Double.self).scalars == [1.5, -2, 3, 4] && flat.cast(to: Double.self) == nested.cast(to: Double.self)
                && binary.cast(to: Double.self) == nested.cast(to: Double.self))
        #expect(binary.dtype == .float32 && binary.shape == [2, 2])
    }

    static let bad: [(String, String)] = [
        (#"{"shape": [2, 2], "data": [1, 2, 3]}"#, "x.data"),
        (#"{"shape": [2], "dtype": "float64", "encoding": "base64", "data": "AAAA"}"#, "x.data"),
        (#"{"shape": [1], "dtype": "float32", "encoding": "base64", "data": "!!!!"}"#, "x.data"),
        (#"{"shape": [0, 3], "data": []}"#, "x.shape"),
        (#"{"shape": [2], "dtype": "int8", "data": [1, 2]}"#, "x.dtype"),
        (#"{"shape": [2], "data": [1, 2], "strides": [1]}"#, "x.strides"),
        (#"{"data": [1]}"#, "x.shape"),
        (#"{"shape": [1.5], "data": [1]}"#, "x.shape[0]"),
        (#"[[1, 2], [3]]"#, "x[1]"),
        (#"[[1, 2], [3, "4"]]"#, "x[1][1]"),
        (#""abc""#, "x"),
        (#"[]"#, "x"),
    ]

    @Test("bad tensors name the field", arguments: bad)
    func refuses(text: String, path: String) throws {
        do {
            _ = try TensorDecoder.decode(try JSONParser.parse(text), at: "x")
            Issue.record("accepted \(text)")
        } catch let GradError.invalid(issues) {
            #expect(issues.map(\.place) == [.field(path)], "\(issues)")
        }
    }

    @Test("safetensors round trip")
    func safetensors() throws {
        let a = AnyTensor(Tensor<Float>(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6]))
        let b = AnyTensor(Tensor<Double>(shape: [3], scalars: [0.1, 0.2, 0.3]))
        let bytes = Safetensors.write([("inputs.x", a), ("inputs.t", b)], metadata: [("request", #"{"wrt": ["x"]}"#)])
        let file = try bytes.withUnsafeBytes { try Safetensors.read($0) }
        #expect(file.tensors["inputs.x"] == a && file.tensors["inputs.t"] == b)
        #expect(file.metadata["request"] == #"{"wrt": ["x"]}"#)
        // A declared size whose byte count overflows is refused, not a trap (found by schemathesis).
        let header = Array(#"{"inputs.x": {"dtype": "F64", "shape": [999999999999999, 2305], "data_offsets": [0, 0]}}"#.utf8)
        var evil = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) }
        evil += header
        #expect(throws: GradError.self) { try evil.withUnsafeBytes { try Safetensors.read($0) } }
        // Truncated files are refused with an error, not a crash.
        for cut in [0, 4, 8, 20, bytes.count - 1] {
            #expect(throws: GradError.self) { try Array(bytes.prefix(cut)).withUnsafeBytes { try Safetensors.read($0) } }
        }
    }

    @Test("safetensors tensors may not share bytes: a few kilobytes naming one range thousands of times are refused before any is decoded")
    func safetensorsOverlap() throws {
        func file(_ entries: [(String, Int, Int)], dataBytes: Int) -> [UInt8] {
            let fields = entries.map { #""\#($0.0)": {"dtype": "F32", "shape": [\#(($0.2 - $0.1) / 4)], "data_offsets": [\#($0.1), \#($0.2)]}"# }
            let header = Array("{\(fields.joined(separator: ", "))}".utf8)
            var bytes = withUnsafeBytes(of: UInt64(header.count).littleEndian) { Array($0) } + header
            bytes += [UInt8](repeating: 0, count: dataBytes)
            return bytes
        }
        // Side by side, and with a hole between: fine.
        let fine = try file([("a", 0, 8), ("b", 8, 16), ("c", 20, 24)], dataBytes: 24).withUnsafeBytes { try Safetensors.read($0) }
        #expect(fine.tensors.count == 3)
        // Two tensors sharing 4 bytes, and 5 000 tensors over the same 4 KiB (before: 20 MB of copies
        // from a 400 kB body, or 4 GB from a 4 MB one): refused by name.
        for (entries, data) in [([("a", 0, 8), ("b", 4, 12)], 12), ((0..<5000).map { ("t\($0)", 0, 4096) }, 4096)] {
            do {
                _ = try file(entries, dataBytes: data).withUnsafeBytes { try Safetensors.read($0) }
                Issue.record("overlapping tensors accepted")
            } catch let GradError.invalid(issues) {
                #expect(issues.count == min(entries.count - 1, 101), "one issue per tensor that starts inside another, at most 100 and a count")
                #expect(issues.first.map { "\($0.place)".contains("data_offsets") && $0.message.contains("overlaps") } == true, "\(issues.prefix(1))")
            }
        }
    }
}

@Suite("JSON parser bounds")
struct JSONParserBoundsTests {
    @Test("a document of tiny values is refused before it outgrows its text many times over")
    func nodeBudget() throws {
        let small = "[" + Array(repeating: "{}", count: 1000).joined(separator: ",") + "]"
        #expect(throws: Never.self) { _ = try JSONParser.parse(small) }
        // 3 bytes per node is far denser than one node per 16 bytes: past the fixed allowance, refused.
        let n = 2 * JSONParser.maxNodes(forBytes: 0)
        let dense = "[" + Array(repeating: "{}", count: n).joined(separator: ",") + "]"
        #expect(throws: JSONParseError.self) { _ = try JSONParser.parse(dense) }
        // Numbers in numeric arrays are not nodes: a million of them parse.
        let numbers = "[" + Array(repeating: "0", count: 1_000_000).joined(separator: ",") + "]"
        guard case .numbers(let shape, _) = try JSONParser.parse(numbers) else { Issue.record("not numeric"); return }
        #expect(shape == [1_000_000])
    }
}
