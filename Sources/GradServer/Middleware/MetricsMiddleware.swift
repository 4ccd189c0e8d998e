import Hummingbird
import Prometheus

/// Request counts, latency histograms, errors by status and requests in flight, straight into
/// the Prometheus registry that `/metrics` exposes.
struct RequestMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let registry: PrometheusCollectorRegistry

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        let inFlight = registry.makeGauge(descriptor: HTTPMetricNames.inFlight)
        inFlight.increment()
        var status = 500
        defer {
            inFlight.decrement()
            let route = context.endpointPath ?? "unmatched"
            let method = request.method.rawValue
            registry.makeCounter(descriptor: HTTPMetricNames.requests, labels: [("method", method), ("route", route), ("status", "\(status)")]).increment()
            if status >= 400 {
                registry.makeCounter(descriptor: HTTPMetricNames.errors, labels: [("route", route), ("status", "\(status)")]).increment()
            }
            registry.makeDurationHistogram(
                descriptor: HTTPMetricNames.duration, labels: [("method", method), ("route", route)], buckets: HTTPMetricNames.buckets
            )
            .record(ContinuousClock.now - start)
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

/// Metric names (`gradserve_http_*`).
enum HTTPMetricNames {
    static var requests: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "gradserve", subsystem: "http", metricName: "requests", unitName: "total", helpText: "HTTP requests answered")
    }
    static var errors: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "gradserve", subsystem: "http", metricName: "errors", unitName: "total", helpText: "Error answers by status")
    }
    static var inFlight: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "gradserve", subsystem: "http", metricName: "requests_in_flight", unitName: "", helpText: "HTTP requests being handled")
    }
    static var duration: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "gradserve", subsystem: "http", metricName: "request_duration", unitName: "seconds", helpText: "Time to answer, by route")
    }
    static var writeDuration: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "gradserve", subsystem: "http", metricName: "response_write", unitName: "seconds",
            helpText: "From an answer's head to its last byte written to the socket")
    }
    static var buckets: [Duration] {
        [500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000]
            .map { Duration.microseconds($0) }
    }
}
