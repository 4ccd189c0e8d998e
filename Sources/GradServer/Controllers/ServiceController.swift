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
    let drain: Drain

    static var openAPI: [UInt8] {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"), let data = try? Data(contentsOf: url) else { return [] }
        return [UInt8](data)
    }

    func addRoutes(to router: Router<Context>) {
        router.get("healthz") { _, _ in try Response.json(HealthAnswer()) }
        router.get("readyz") { _, _ in
            // Busy when the queue is full or the memory budget is nearly spent: a load balancer
            // then sends new requests to another replica. Cancelled computations count until they stop.
            let pending = pool.pendingCount
            let capacity = pool.capacity
            let reserved = memory.reservedBytes
            let draining = drain.isDraining
            let busy = draining || pending >= capacity || reserved >= memory.limit / 10 * 9
            let answer = ReadinessAnswer(
                status: draining ? "draining" : busy ? "busy" : "ready", pending: pending, capacity: capacity, memoryReservedBytes: reserved,
                memoryLimitBytes: memory.limit)
            return try Response.json(answer, status: busy ? .serviceUnavailable : .ok, headers: busy ? [.retryAfter: "1"] : [:])
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
            try Response.json(
                InfoAnswer(
                    blas: .init(version: BLASRuntime.version, core: BLASRuntime.coreName, threads: BLASRuntime.threads, config: BLASRuntime.config),
                    cpu: MachineInfo.current(measurePeak: false).cpu, cores: BLASRuntime.processors, workers: configuration.workers,
                    threadsPerRequest: configuration.threadsPerRequest,
                    inlineMilliseconds: configuration.computesInline ? configuration.inlineMilliseconds : 0,
                    limits: .init(configuration, memoryLimit: memory.limit),
                    auth: configuration.apiKey != nil, models: registry.all().count))
        }
    }
}
