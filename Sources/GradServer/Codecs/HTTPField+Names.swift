import HTTPTypes

extension HTTPField.Name {
    /// `Server-Timing` (W3C): per-phase durations of a compute request.
    static let serverTiming = HTTPField.Name("Server-Timing")!
}
