import Foundation
import GradCodec
import GradCore
import GradServer
import Testing

/// `--models-dir`: a read-only directory of model files every replica loads at start.
@Suite("Models directory")
struct ModelsDirectoryTests {
    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("gradserve-models-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test("registry files and registration bodies load with their content ids; they cannot be deleted")
    func loads() throws {
        // A registry file, as a data directory holds it after POST /v1/models.
        let source = try temporaryDirectory()
        let writer = try ModelRegistry(dataDirectory: source.path, logger: quietLogger())
        let model = try ModelDecoder.decode(try JSONParser.parse(tinyModel))
        let (entry, _) = try writer.register(model, name: "tiny")
        let shipped = try temporaryDirectory()
        try FileManager.default.copyItem(
            at: source.appendingPathComponent("models/\(entry.id).json"), to: shipped.appendingPathComponent("tiny.json"))
        // A POST /v1/models body.
        let relu = #"{"name": "relu", "model": {"layers": [{"op": "relu"}]}}"#
        try Data(relu.utf8).write(to: shipped.appendingPathComponent("relu.json"))
        try Data("not a model file".utf8).write(to: shipped.appendingPathComponent("README.txt"))

        let registry = try ModelRegistry(dataDirectory: try temporaryDirectory().path, modelsDirectory: shipped.path, logger: quietLogger())
        let reluID = ModelRegistry.id(of: try ModelDecoder.decode(try JSONParser.parse(#"{"layers": [{"op": "relu"}]}"#)))
        #expect(Set(registry.all().map(\.id)) == [entry.id, reluID])
        #expect(registry.get(entry.id)?.name == "tiny" && registry.get(entry.id)?.preloaded == true)
        #expect(registry.get(reluID)?.name == "relu")
        // Registering the same content again is a no-op; deleting it is refused; quotas do not count it.
        #expect(try registry.register(model, name: nil).created == false)
        #expect(throws: Problem.self) { try registry.delete(entry.id) }
        #expect(registry.usage.models == 0)
    }

    @Test("a bad file stops the start, naming the file")
    func badFile() throws {
        let shipped = try temporaryDirectory()
        try Data(#"{"model": {"layers": [{"op": "swish"}]}}"#.utf8).write(to: shipped.appendingPathComponent("bad.json"))
        do {
            _ = try ModelRegistry(dataDirectory: try temporaryDirectory().path, modelsDirectory: shipped.path, logger: quietLogger())
            Issue.record("started with a bad model file")
        } catch let error as StartupError {
            #expect(error.message.contains("bad.json") && error.message.contains("swish"), "\(error.message)")
        }
        let wrongID = #"{"id": "0000", "created": "2026-01-01T00:00:00Z", "model": {"layers": [{"op": "relu"}]}}"#
        try FileManager.default.removeItem(at: shipped.appendingPathComponent("bad.json"))
        try Data(wrongID.utf8).write(to: shipped.appendingPathComponent("wrong.json"))
        #expect(throws: StartupError.self) {
            try ModelRegistry(dataDirectory: try temporaryDirectory().path, modelsDirectory: shipped.path, logger: quietLogger())
        }
        #expect(throws: StartupError.self) {
            try ModelRegistry(dataDirectory: try temporaryDirectory().path, modelsDirectory: "/nonexistent/models", logger: quietLogger())
        }
    }
}
