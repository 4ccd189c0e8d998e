import Crypto
import Foundation
import GradCodec
import GradCore
import Hummingbird
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
    /// Whether it came from `--models-dir` (read-only: it cannot be deleted through the API).
    public var preloaded = false
}

/// Content-addressed models, persisted one file each under `<data-dir>/models/`.
///
/// Writes are atomic (temp file, fsync, rename, fsync of the directory): a model acknowledged
/// with 201 survives a kill -9 at any moment. At start every file is read and re-validated; a
/// damaged or partial file is logged and skipped, never fatal.
///
/// Registrations and deletions are serialized (one writer at a time, lookups never wait for it):
/// whether a registration is new (201) or known (200) is decided together with its write, and a
/// racing DELETE either comes before (and the model is registered again) or after (and it is
/// gone from memory and disk alike). Quotas bound the number of models and the bytes of their
/// files; a full quota or a full disk is 507 and leaves no partial file.
///
/// Models from `--models-dir` (read-only, shipped with a deployment so every replica has them)
/// are loaded once at start, count against no quota, and cannot be deleted (409).
public final class ModelRegistry: Sendable {
    /// How much the registry may hold.
    public struct Quota: Sendable {
        /// Most models held at once (`--max-models`).
        public var maxModels: Int
        /// Most bytes of canonical model files held at once (`--max-registry-bytes`).
        public var maxBytes: Int
        /// Creates quotas; the defaults are unlimited.
        public init(maxModels: Int = .max, maxBytes: Int = .max) {
            self.maxModels = maxModels
            self.maxBytes = maxBytes
        }
    }

    private struct Stored {
        var models: [String: RegisteredModel] = [:]
        var fileBytes: [String: Int] = [:]
        var totalBytes = 0
    }

    private let directory: URL
    private let preloaded: [String: RegisteredModel]
    private let state = Mutex(Stored())
    private let writer = Mutex(())
    private let quota: Quota
    private let logger: Logger

    /// Opens (creating if needed) the registry under `dataDirectory` and loads what is there,
    /// then every model file of `modelsDirectory` (a bad one there is a ``StartupError``).
    public init(dataDirectory: String, modelsDirectory: String? = nil, logger: Logger, quota: Quota = Quota()) throws {
        self.directory = URL(fileURLWithPath: dataDirectory).appendingPathComponent("models")
        self.logger = logger
        self.quota = quota
        self.preloaded = try modelsDirectory.map { try Self.preload($0, logger: logger) } ?? [:]
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        load()
    }

    /// Reads every `*.json` file of `path`: a registry file (`id`, `created`, `model`; the id
    /// must match the content) or a `POST /v1/models` body (`model`, optional `name`).
    private static func preload(_ path: String, logger: Logger) throws -> [String: RegisteredModel] {
        let dir = URL(fileURLWithPath: path)
        let files: [String]
        do { files = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".json") }.sorted() } catch {
            throw StartupError(message: "--models-dir \(path): cannot be read (\(error.localizedDescription))")
        }
        var models: [String: RegisteredModel] = [:]
        let created = ISO8601DateFormatter().string(from: Date())
        for file in files {
            let url = dir.appendingPathComponent(file)
            do {
                let data = try Data(contentsOf: url)
                guard case .object(let o) = try JSONParser.parse([UInt8](data)), let m = o["model"] else {
                    throw GradError.invalid("", "expected a JSON object with a model (a registry file or a POST /v1/models body)")
                }
                let model = try ModelDecoder.decode(m)
                let id = Self.id(of: model)
                if case .string(let stated)? = o["id"], stated != id {
                    throw GradError.invalid("id", "is \(stated), but the model's content has id \(id)")
                }
                var name: String? = nil
                if case .string(let n)? = o["name"] { name = n }
                var stamp = created
                if case .string(let c)? = o["created"] { stamp = c }
                models[id] = RegisteredModel(id: id, name: name, created: stamp, model: model, preloaded: true)
            } catch {
                throw StartupError(message: "--models-dir: \(url.path): \(error)")
            }
        }
        logger.info("models loaded from --models-dir", metadata: ["models": "\(models.count)", "directory": "\(path)"])
        return models
    }

    /// The content id of `model`.
    public static func id(of model: AnyModel) -> String {
        SHA256.hash(data: ModelEncoder.canonical(model)).map { String(format: "%02x", $0) }.joined()
    }

    /// Looks a model up by id.
    public func get(_ id: String) -> RegisteredModel? { preloaded[id] ?? state.withLock { $0.models[id] } }

    /// Every model, oldest first.
    public func all() -> [RegisteredModel] {
        let registered = state.withLock { Array($0.models.values) }.filter { preloaded[$0.id] == nil }
        return (Array(preloaded.values) + registered).sorted { ($0.created, $0.id) < ($1.created, $1.id) }
    }

    /// Models held and the bytes of their files.
    public var usage: (models: Int, bytes: Int) { state.withLock { ($0.models.count, $0.totalBytes) } }

    /// Registers `model`; returns the entry and whether it is new. Idempotent: the same content gives the same id.
    public func register(_ model: AnyModel, name: String?) throws -> (RegisteredModel, created: Bool) {
        let canonical = ModelEncoder.canonical(model)
        let id = SHA256.hash(data: canonical).map { String(format: "%02x", $0) }.joined()
        if let existing = get(id) { return (existing, false) }
        return try writer.withLock { _ in
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
            let size = w.bytes.count
            let (count, total) = usage
            if count >= quota.maxModels {
                throw Self.full("the registry holds \(count) models, its limit (--max-models)")
            }
            if total + size > quota.maxBytes {
                throw Self.full(
                    "the registry's files take \(Count(total).bytesDescription); this model's \(Count(size).bytesDescription) would pass its limit of \(Count(quota.maxBytes).bytesDescription) (--max-registry-bytes)"
                )
            }
            do {
                try AtomicFile.write(w.bytes, to: directory.appendingPathComponent("\(id).json"))
            } catch let e as POSIXError where e.code == .ENOSPC || e.code == .EDQUOT {
                throw Self.full("the disk holding the registry is full (\(e.code == .ENOSPC ? "ENOSPC" : "EDQUOT")); nothing was written")
            }
            state.withLock {
                $0.models[id] = entry
                $0.fileBytes[id] = size
                $0.totalBytes += size
            }
            return (entry, true)
        }
    }

    private static func full(_ detail: String) -> Problem {
        Problem(
            HTTPResponse.Status(code: 507, reasonPhrase: "Insufficient Storage"), title: "Registry full", detail: detail + "; delete models or register fewer")
    }

    /// Removes a model; false when there was none; 409 for a model from `--models-dir`.
    public func delete(_ id: String) throws -> Bool {
        if preloaded[id] != nil {
            throw Problem(
                .conflict, title: "Model is read-only",
                detail: "model \(id) comes from --models-dir; remove its file there and restart to drop it",
                errors: [(path: "id", message: "a --models-dir model cannot be deleted")])
        }
        return writer.withLock { _ in
            let removed = state.withLock { s -> Bool in
                guard s.models.removeValue(forKey: id) != nil else { return false }
                s.totalBytes -= s.fileBytes.removeValue(forKey: id) ?? 0
                return true
            }
            guard removed else { return false }
            let url = directory.appendingPathComponent("\(id).json")
            try? FileManager.default.removeItem(at: url)
            AtomicFile.syncDirectory(directory)
            return true
        }
    }

    private func load() {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        var loaded = Stored()
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
                loaded.models[id] = RegisteredModel(id: id, name: name, created: created, model: model)
                loaded.fileBytes[id] = data.count
                loaded.totalBytes += data.count
            } catch {
                logger.error("skipping damaged model file", metadata: ["file": "\(url.path)", "error": "\(error)"])
            }
        }
        state.withLock { $0 = loaded }
        logger.info("model registry loaded", metadata: ["models": "\(loaded.models.count)", "directory": "\(directory.path)"])
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
