import Crypto
import Foundation
import GradCodec
import GradCore
import Logging
import Synchronization

/// One registered model.
public struct RegisteredModel: Sendable {
    /// SHA-256 (hex) of the canonical model.
    public let id: String
    /// The name given at registration (not part of the id).
    public let name: String?
    /// When it was first registered (ISO 8601).
    public let created: String
    /// The validated model.
    public let model: AnyModel
}

/// Content-addressed models, persisted one file each under `<data-dir>/models/`.
///
/// Writes are atomic (temp file, fsync, rename, fsync of the directory): a model acknowledged
/// with 201 survives a kill -9 at any moment. At start every file is read and re-validated; a
/// damaged or partial file is logged and skipped, never fatal.
public final class ModelRegistry: Sendable {
    private let directory: URL
    private let models = Mutex<[String: RegisteredModel]>([:])
    private let logger: Logger

    /// Opens (creating if needed) the registry under `dataDirectory` and loads what is there.
    public init(dataDirectory: String, logger: Logger) throws {
        self.directory = URL(fileURLWithPath: dataDirectory).appendingPathComponent("models")
        self.logger = logger
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        load()
    }

    /// The content id of `model`.
    public static func id(of model: AnyModel) -> String {
        SHA256.hash(data: ModelEncoder.canonical(model)).map { String(format: "%02x", $0) }.joined()
    }

    /// Looks a model up by id.
    public func get(_ id: String) -> RegisteredModel? { models.withLock { $0[id] } }

    /// Every model, oldest first.
    public func all() -> [RegisteredModel] { models.withLock { Array($0.values) }.sorted { ($0.created, $0.id) < ($1.created, $1.id) } }

    /// Registers `model`; returns the entry and whether it is new. Idempotent: the same content gives the same id.
    public func register(_ model: AnyModel, name: String?) throws -> (RegisteredModel, created: Bool) {
        let canonical = ModelEncoder.canonical(model)
        let id = SHA256.hash(data: canonical).map { String(format: "%02x", $0) }.joined()
        if let existing = get(id) { return (existing, false) }
        let entry = RegisteredModel(id: id, name: name, created: ISO8601DateFormatter().string(from: Date()), model: model)
        var w = JSONWriter(capacity: canonical.count + 256)
        w.beginObject()
        w.key("id")
        w.string(id)
        w.key("name")
        if let name { w.string(name) } else { w.null() }
        w.key("created")
        w.string(entry.created)
        w.key("model")
        w.raw(canonical)
        w.endObject()
        try AtomicFile.write(w.bytes, to: directory.appendingPathComponent("\(id).json"))
        let stored = models.withLock { m -> RegisteredModel in
            if let raced = m[id] { return raced }
            m[id] = entry
            return entry
        }
        return (stored, stored.created == entry.created)
    }

    /// Removes a model; false when there was none.
    public func delete(_ id: String) throws -> Bool {
        guard models.withLock({ $0.removeValue(forKey: id) }) != nil else { return false }
        let url = directory.appendingPathComponent("\(id).json")
        try? FileManager.default.removeItem(at: url)
        AtomicFile.syncDirectory(directory)
        return true
    }

    private func load() {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        var loaded: [String: RegisteredModel] = [:]
        for file in files {
            let url = directory.appendingPathComponent(file)
            if file.hasPrefix(".") && file.contains(".tmp") {
                try? FileManager.default.removeItem(at: url)  // an interrupted write; never acknowledged
                continue
            }
            guard file.hasSuffix(".json") else { continue }
            do {
                let data = try Data(contentsOf: url)
                guard case .object(let o) = try JSONParser.parse([UInt8](data)), case .string(let id)? = o["id"], let m = o["model"],
                    case .string(let created)? = o["created"]
                else { throw GradError.invalid("", "missing id, created or model") }
                let model = try ModelDecoder.decode(m)
                guard Self.id(of: model) == id, file == "\(id).json" else { throw GradError.invalid("", "content does not match its id") }
                var name: String? = nil
                if case .string(let n)? = o["name"] { name = n }
                loaded[id] = RegisteredModel(id: id, name: name, created: created, model: model)
            } catch {
                logger.error("skipping damaged model file", metadata: ["file": "\(url.path)", "error": "\(error)"])
            }
        }
        models.withLock { $0 = loaded }
        logger.info("model registry loaded", metadata: ["models": "\(loaded.count)", "directory": "\(directory.path)"])
    }
}

/// Crash-safe file replacement.
enum AtomicFile {
    /// Writes `bytes` to a temp file beside `url`, fsyncs it, renames it over `url`, fsyncs the directory.
    static func write(_ bytes: [UInt8], to url: URL) throws {
        let dir = url.deletingLastPathComponent()
        let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).tmp-\(UInt64.random(in: 0...UInt64.max))")
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var ok = false
        defer {
            if !ok { unlink(tmp.path) }
        }
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                close(fd)
                throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
            }
            offset += n
        }
        guard fsync(fd) == 0 else {
            close(fd)
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
        close(fd)
        guard rename(tmp.path, url.path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        ok = true
        syncDirectory(dir)
    }

    /// fsync of a directory, so a rename or unlink in it is durable.
    static func syncDirectory(_ dir: URL) {
        let fd = open(dir.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }
}
