import Hummingbird
import Prometheus

/// Request counts, latency histograms and errors by status, straight into the Prometheus registry.
struct RequestMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let registry: PrometheusCollectorRegistry
    static var buckets: [Duration] {
        [500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000]
            .map { Duration.microseconds($0) }
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let inFlight = registry.makeGauge(name: "gradserve_http_requests_in_flight", labels: [], help: "HTTP requests being handled")
        inFlight.increment()
        defer { inFlight.decrement() }
        var status = 500
        defer {
            let route = context.endpointPath ?? "unmatched"
            let labels = [("method", request.method.rawValue), ("route", route), ("status", "\(status)")]
            registry.makeCounter(name: "gradserve_http_requests_total", labels: labels, help: "HTTP requests answered").increment()
            if status >= 400 {
                registry.makeCounter(name: "gradserve_http_errors_total", labels: [("route", route), ("status", "\(status)")], help: "Error answers by status")
                    .increment()
            }
            registry.makeDurationHistogram(
                name: "gradserve_http_request_duration_seconds", labels: [("method", request.method.rawValue), ("route", route)], buckets: Self.buckets,
                help: "Time to answer, by route"
            ).record(ContinuousClock.now - start)
        }
        do {
            let response = try await next(request, context)
            status = response.status.code
            return response
        } catch let error as any HTTPResponseError {
            status = error.status.code
            throw error
        }
    }
}
