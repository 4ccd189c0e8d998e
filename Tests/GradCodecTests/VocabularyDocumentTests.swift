import Foundation
import GradCodec
import GradCore
import Testing

/// The op table of `docs/api.md` and the layer schemas of `openapi.yaml` are renderings of
/// ``OpDeclaration/all``; they must not drift from it. With `GRADSERVE_WRITE_VOCABULARY=1` the
/// test rewrites both regions instead of failing (then review the diff and commit it).
@Suite("Op vocabulary documents")
struct VocabularyDocumentTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let regions: [(file: String, begin: String, end: String, render: @Sendable () -> String)] = [
        ("docs/api.md", "<!-- ops:begin", "<!-- ops:end -->", VocabularyDocument.markdownTable),
        ("Sources/GradServer/Resources/openapi.yaml", "    # ops:begin", "    # ops:end", VocabularyDocument.openAPISchemas),
    ]

    @Test("the generated regions match the declarations", arguments: 0..<regions.count)
    func inStep(index: Int) throws {
        let (file, begin, end, render) = Self.regions[index]
        let url = Self.root.appendingPathComponent(file)
        let text = try String(contentsOf: url, encoding: .utf8)
        let b = try #require(text.range(of: begin), "\(file) has no \(begin) marker")
        let lineEnd = try #require(text[b.upperBound...].firstIndex(of: "\n"))
        let e = try #require(text.range(of: end, range: lineEnd..<text.endIndex), "\(file) has no \(end) marker")
        let current = String(text[text.index(after: lineEnd)..<e.lowerBound])
        let wanted = render()
        if current != wanted, ProcessInfo.processInfo.environment["GRADSERVE_WRITE_VOCABULARY"] == "1" {
            try (String(text[..<text.index(after: lineEnd)]) + wanted + String(text[e.lowerBound...])).write(to: url, atomically: true, encoding: .utf8)
            return
        }
        #expect(current == wanted, "\(file) is out of step with OpDeclaration.all; run GRADSERVE_WRITE_VOCABULARY=1 swift test --filter VocabularyDocument")
    }

    @Test("every declared op decodes, round-trips through the canonical encoder, and nothing else decodes")
    func everyOp() throws {
        for op in OpDeclaration.all where op.isActivation {
            let spec = try ModelDecoder.decodeSpec(try JSONParser.parse(Array(#"{"layers": [{"op": "\#(op.name)"}]}"#.utf8)), at: "model")
            guard case .activation(let a) = spec.layers[0] else { Issue.record("\(op.name) did not decode as an activation"); continue }
            #expect(a.op == op.name)
            let model = try ModelBuilder.build(spec)
            let again = try ModelDecoder.decode(try JSONParser.parse(ModelEncoder.canonical(model)))
            #expect(ModelEncoder.canonical(again) == ModelEncoder.canonical(model))
        }
        #expect(throws: GradError.self) { try ModelDecoder.decodeSpec(try JSONParser.parse(Array(#"{"layers": [{"op": "swish"}]}"#.utf8)), at: "model") }
    }
}
