/// A size derived from a request (elements, bytes, FLOPs), in overflow-checked arithmetic.
///
/// Every number in a request is hostile until planned: products and sums of `Count` saturate at
/// ``overflow`` instead of trapping, and a saturated count compares above every limit. This is
/// the one place where request-derived sizes are multiplied; planners and front ends
/// (`/v1`, Tesseract, UM-Bridge) build their sizes from it, never with a bare `*`.
public struct Count: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// The value, or `Int.max` when the true value does not fit (or a factor was negative).
    public let value: Int

    /// The saturated value.
    public static let overflow = Count(exactly: .max)
    /// Zero, exactly.
    public static let zero = Count(exactly: 0)

    private init(exactly v: Int) { value = v }

    /// `n`, with negative values treated as overflow (a negative extent is never a valid size).
    public init(_ n: Int) { value = n < 0 ? .max : n }

    /// Whether the true value was too large to represent.
    public var overflowed: Bool { value == .max }

    /// The product of `factors` (empty: 1).
    public static func product(_ factors: [Int]) -> Count { factors.reduce(Count(1)) { $0 * $1 } }

    /// The product, saturating at overflow.
    public static func * (a: Count, b: Count) -> Count {
        if a.value == 0 || b.value == 0 { return .zero }
        if a.overflowed || b.overflowed { return .overflow }
        let (p, o) = a.value.multipliedReportingOverflow(by: b.value)
        return o ? .overflow : Count(exactly: p)
    }

    /// The product, saturating at overflow.
    public static func * (a: Count, b: Int) -> Count { a * Count(b) }

    /// The sum, saturating at overflow.
    public static func + (a: Count, b: Count) -> Count {
        if a.overflowed || b.overflowed { return .overflow }
        let (s, o) = a.value.addingReportingOverflow(b.value)
        return o ? .overflow : Count(exactly: s)
    }

    /// The sum, saturating at overflow.
    public static func + (a: Count, b: Int) -> Count { a + Count(b) }

    /// Adds in place, saturating at overflow.
    public static func += (a: inout Count, b: Count) { a = a + b }

    /// Orders by value (an overflowed count is the largest).
    public static func < (a: Count, b: Count) -> Bool { a.value < b.value }

    /// The larger of two counts.
    public static func max(_ a: Count, _ b: Count) -> Count { a < b ? b : a }

    /// As a Double (for FLOPs and messages); `.infinity` when saturated.
    public var double: Double { overflowed ? .infinity : Double(value) }

    /// The value, or "more than Int.max" after overflow.
    public var description: String { overflowed ? "more than \(Int.max)" : "\(value)" }

    /// Bytes, said for people: `1.5 GiB`.
    public var bytesDescription: String { Count.describeBytes(self) }

    /// `n` bytes as `512 B`, `3.2 MiB`, `1.5 GiB`.
    public static func describeBytes(_ c: Count) -> String {
        if c.overflowed { return "more than 8 EiB" }
        let v = Double(c.value)
        for (unit, scale) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] where v >= Double(scale) {
            return "\(((v / Double(scale)) * 10).rounded() / 10) \(unit)"
        }
        return "\(c.value) B"
    }
}
