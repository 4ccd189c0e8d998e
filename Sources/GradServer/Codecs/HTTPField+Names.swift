import HTTPTypes

extension HTTPField.Name {
    /// `Server-Timing` (W3C): per-phase durations of a compute request.
    static let serverTiming = HTTPField.Name("Server-Timing")!
    /// `X-Floor-Key`: which stored answer the transport floor (``TransportFloor``) sends back.
    static let floorKey = HTTPField.Name("X-Floor-Key")!
}
