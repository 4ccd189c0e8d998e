import HTTPTypes

extension HTTPField.Name {
    /// `Server-Timing` (W3C): per-phase durations of a compute request.
    static let serverTiming = HTTPField.Name("Server-Timing")!
    /// `X-Floor-Key`: which stored answer the transport floor (``TransportFloor``) sends back.
    static let floorKey = HTTPField.Name("X-Floor-Key")!
}

/// The value of a `Server-Timing` header: `read;dur=0.240, compute;dur=0.830` (milliseconds,
/// three decimals).
///
/// Written by hand and not with `String(format:)`: Foundation's formatter took ~30 µs a request
/// on the event loop (measured with `perf` under wrk), more than the rest of the header handling.
enum ServerTiming {
    static func value(_ phases: [(String, Double)]) -> String {
        var out = ""
        out.reserveCapacity(phases.count * 20)
        for (i, (name, seconds)) in phases.enumerated() {
            if i > 0 { out += ", " }
            out += name
            out += ";dur="
            out += milliseconds(seconds)
        }
        return out
    }

    /// `seconds` in milliseconds with three decimals (`0.083`, `12.500`); 0 for what is not a
    /// finite, non-negative duration.
    static func milliseconds(_ seconds: Double) -> String {
        let us = seconds.isFinite && seconds > 0 ? Int((min(seconds, 1e9) * 1e6).rounded()) : 0
        let frac = String(us % 1000)
        return "\(us / 1000)." + String(repeating: "0", count: 3 - frac.count) + frac
    }
}
