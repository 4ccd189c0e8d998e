/// Compute precision of a model, named as on the wire.
public enum DType: String, Sendable, CaseIterable, Codable {
    case float32
    case float64

    /// Bytes per element.
    public var byteCount: Int { self == .float32 ? 4 : 8 }
}
