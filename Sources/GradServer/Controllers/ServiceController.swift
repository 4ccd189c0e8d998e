import Foundation
import GradCodec
import GradCore
import Hummingbird
import Prometheus

/// `/healthz`, `/readyz`, `/metrics`, `/v1/info`, `/openapi.yaml`. None of these touch the
/// compute pool, so they answer while long computations run.
struct ServiceController: Sendable {
    typealias Context = GradRequestContext
    let pool: ComputePool
    let memory: MemoryBudget
    let metrics: PrometheusCollectorRegistry
    let configuration: ServerConfiguration
    let registry: ModelRegistry

    static var openAPI: [UInt8] {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"), let data = try? Data(contentsOf: url) else { return [] }
        return [UInt8](data)
    }

    func addRoutes(to router: Router<Context>) {
        router.get("healthz") { _, _ in json(#"{"status":"ok"}"#) }
        router.get("readyz") { _, _ in
            // Busy when the queue is full or the memory budget is nearly spent: a load balancer
            // then sends new requests to another replica. Cancelled computations count until they stop.
            let pending = pool.pendingCount
            let capacity = pool.capacity
            let reserved = memory.reservedBytes
            let busy = pending >= capacity || reserved >= memory.limit / 10 * 9
            let text =
                #"{"status":"\#(busy ? "busy" : "ready")","pending":\#(pending),"capacity":\#(capacity),"memory_reserved_bytes":\#(reserved),"memory_limit_bytes":\#(memory.limit)}"#
            if busy {
                return Response(
                    status: .serviceUnavailable, headers: [.contentType: "application/json", .retryAfter: "1"],
                    body: .init(byteBuffer: ByteBuffer(string: text)))
            }
            return json(text)
        }
        router.get("metrics") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: metrics.emitToBuffer())))
        }
        let spec = Self.openAPI
        router.get("openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"], body: .init(byteBuffer: ByteBuffer(bytes: spec)))
        }
    }

    func addV1Routes(to group: RouterGroup<Context>) {
        group.get("info") { _, _ in
            var w = JSONWriter()
            w.beginObject()
            w.key("version")
            w.string(GradserveVersion.current)
            w.key("blas")
            w.beginObject()
            w.key("library")
            w.string("OpenBLAS")
            w.key("version")
            w.string(BLASRuntime.version)
            w.key("core")
            w.string(BLASRuntime.coreName)
            w.key("threads")
            w.number(BLASRuntime.threads)
            w.key("config")
            w.string(BLASRuntime.config)
            w.endObject()
            w.key("cpu")
            w.string(MachineInfo.current(measurePeak: false).cpu)
            w.key("cores")
            w.number(BLASRuntime.processors)
            w.key("workers")
            w.number(configuration.workers)
            w.key("threads_per_request")
            w.number(configuration.threadsPerRequest)
            w.key("limits")
            w.beginObject()
            for (k, v) in [
                ("max_body_bytes", configuration.maxBodyBytes), ("max_output_elements", configuration.maxOutputElements),
                ("max_queued", configuration.maxQueued), ("max_request_memory_bytes", configuration.maxRequestMemory),
                ("memory_limit_bytes", memory.limit), ("max_layers", configuration.maxLayers), ("max_connections", configuration.maxConnections),
                ("max_models", configuration.maxModels), ("max_registry_bytes", configuration.maxRegistryBytes),
            ] {
                w.key(k)
                w.number(v)
            }
            for (k, v) in [
                ("max_request_gflop", configuration.maxRequestGFLOP), ("deadline_s", configuration.deadlineSeconds),
                ("body_timeout_s", configuration.bodyTimeoutSeconds), ("write_timeout_s", configuration.writeTimeoutSeconds),
                ("benchmark_max_s", configuration.benchmarkMaxSeconds),
            ] {
                w.key(k)
                w.number(v)
            }
            w.key("allowed_origins")
            w.beginArray()
            for o in configuration.allowedOrigins { w.string(o) }
            w.endArray()
            w.key("allowed_hosts")
            w.beginArray()
            for h in configuration.allowedHosts { w.string(h) }
            w.endArray()
            w.endObject()
            w.key("auth")
            w.bool(configuration.apiKey != nil)
            w.key("models")
            w.number(registry.all().count)
            w.key("operations")
            w.beginArray()
            for op in Operation.allCases { w.string(op.rawValue) }
            w.string("benchmark")
            w.endArray()
            w.key("protocols")
            w.beginObject()
            w.key("tesseract")
            w.string("/tesseract/{id}/")
            w.key("umbridge")
            w.string("/umbridge/{id}/")
            w.endObject()
            w.key("output_encodings")
            w.beginArray()
            for e in OutputEncoding.allCases { w.string(e.rawValue) }
            w.endArray()
            w.endObject()
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: w.bytes)))
        }
    }

    private func json(_ s: String) -> Response {
        Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: s)))
    }
}
