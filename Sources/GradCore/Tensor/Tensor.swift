/// A contiguous, row-major tensor of `Float` or `Double`.
///
/// Its elements live in a Swift array, or, for a tensor decoded from a request body, in the
/// body's own memory (``init(shape:borrowing:owner:)``): a safetensors input is computed on where it
/// arrived instead of being copied out first. Both read the same; the first write through
/// ``scalars`` moves borrowed elements into an array of their own.
public struct Tensor<Scalar: BLASScalar>: Sendable, Equatable {
    /// Extent of every axis, outermost first.
    public var shape: [Int]
    private var storage: Storage

    private enum Storage: Sendable {
        case owned([Scalar])
        case borrowed(Borrowed)
    }

    /// Elements in memory that `owner` keeps alive and that nothing writes while it does.
    private final class Borrowed: @unchecked Sendable {
        let elements: UnsafeBufferPointer<Scalar>
        let owner: AnyObject
        /// Every element was found finite before the tensor was made (they are never written).
        let finite: Bool

        init(_ elements: UnsafeBufferPointer<Scalar>, owner: AnyObject, finite: Bool) {
            self.elements = elements
            self.owner = owner
            self.finite = finite
        }
    }

    /// Wraps `scalars` with `shape`. The caller guarantees the element count matches.
    public init(shape: [Int], scalars: [Scalar]) {
        precondition(shape.reduce(1, *) == scalars.count, "Tensor: \(shape) does not hold \(scalars.count) elements")
        self.shape = shape
        self.storage = .owned(scalars)
    }

    /// A tensor over `elements` without copying them. The caller guarantees that `owner` keeps
    /// the memory alive and unchanged for as long as it is referenced (a tensor holds it), that
    /// the pointer is aligned for `Scalar`, and that the element count matches `shape`.
    public init(shape: [Int], borrowing elements: UnsafeBufferPointer<Scalar>, owner: AnyObject) {
        self.init(shape: shape, borrowing: elements, owner: owner, checkedFinite: false)
    }

    /// ``init(shape:borrowing:owner:)`` for the package's decoders, which vouch with
    /// `checkedFinite` that they found every element finite (``isKnownFinite``).
    package init(shape: [Int], borrowing elements: UnsafeBufferPointer<Scalar>, owner: AnyObject, checkedFinite: Bool) {
        precondition(shape.reduce(1, *) == elements.count, "Tensor: \(shape) does not hold \(elements.count) elements")
        precondition(elements.isEmpty || Int(bitPattern: elements.baseAddress) % MemoryLayout<Scalar>.alignment == 0, "Tensor: misaligned elements")
        self.shape = shape
        self.storage = .borrowed(Borrowed(elements, owner: owner, finite: checkedFinite))
    }

    /// A tensor of zeros.
    public init(zeros shape: [Int]) {
        self.init(shape: shape, scalars: [Scalar](repeating: 0, count: shape.reduce(1, *)))
    }

    /// The elements in row-major order; `scalars.count` is the product of `shape`. Reading a
    /// borrowed tensor's copies them; hot paths read through ``withUnsafeBufferPointer(_:)``.
    public var scalars: [Scalar] {
        get {
            switch storage {
            case .owned(let a): a
            case .borrowed(let b): Array(b.elements)
            }
        }
        _modify {
            var a = takeScalars()
            defer { storage = .owned(a) }
            yield &a
        }
        set { storage = .owned(newValue) }
    }

    /// The elements as an array, leaving the storage empty so that the array is uniquely referenced.
    private mutating func takeScalars() -> [Scalar] {
        switch storage {
        case .owned(let a):
            storage = .owned([])
            return a
        case .borrowed(let b):
            return Array(b.elements)
        }
    }

    /// Whether the elements live in memory owned by something else (a request body).
    public var isBorrowed: Bool {
        if case .borrowed = storage { return true }
        return false
    }

    /// Whether every element is known to be finite without looking: a borrowed tensor whose
    /// decoder checked it (its elements are never written; a write makes an owned copy, which is
    /// not known finite). The core's input validation then skips its own pass over them.
    public var isKnownFinite: Bool {
        if case .borrowed(let b) = storage { return b.finite }
        return false
    }

    /// Calls `body` with the elements, without copying.
    public func withUnsafeBufferPointer<R, E: Error>(_ body: (UnsafeBufferPointer<Scalar>) throws(E) -> R) throws(E) -> R {
        switch storage {
        case .owned(let a): return try a.withUnsafeBufferPointer(body)
        case .borrowed(let b): return try withExtendedLifetime(b) { () throws(E) -> R in try body(b.elements) }
        }
    }

    /// Calls `body` with the elements' bytes, without copying.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try withUnsafeBufferPointer { (p) throws(E) -> R in try body(UnsafeRawBufferPointer(p)) }
    }

    /// Calls `body` with the elements to write; borrowed elements are first copied into an array.
    public mutating func withUnsafeMutableBufferPointer<R, E: Error>(_ body: (inout UnsafeMutableBufferPointer<Scalar>) throws(E) -> R) throws(E) -> R {
        var a = takeScalars()
        defer { storage = .owned(a) }
        return try a.withUnsafeMutableBufferPointer(body)
    }

    /// Rows `r` of the leading axis; a borrowed tensor's rows are borrowed too (no copy).
    public func rows(_ r: Range<Int>) -> Tensor {
        // Checked in release builds too: a borrowed buffer's slice is not.
        precondition(r.lowerBound >= 0 && r.upperBound <= (shape.first ?? 0), "Tensor: rows \(r) of \(Shape.describe(shape))")
        let width = shape.dropFirst().reduce(1, *)
        let rowShape = [r.count] + shape.dropFirst()
        switch storage {
        case .owned(let a):
            return Tensor(shape: rowShape, scalars: Array(a[(r.lowerBound * width)..<(r.upperBound * width)]))
        case .borrowed(let b):
            let part = UnsafeBufferPointer(rebasing: b.elements[(r.lowerBound * width)..<(r.upperBound * width)])
            return Tensor(shape: rowShape, borrowing: part, owner: b.owner, checkedFinite: b.finite)
        }
    }

    /// The same elements (not copied) with another shape of the same element count.
    public func reshaped(_ shape: [Int]) -> Tensor {
        precondition(shape.reduce(1, *) == count, "Tensor: \(self.shape) cannot become \(shape)")
        var t = self
        t.shape = shape
        return t
    }

    /// Number of elements.
    public var count: Int {
        switch storage {
        case .owned(let a): a.count
        case .borrowed(let b): b.elements.count
        }
    }

    /// Number of axes.
    public var rank: Int { shape.count }

    /// The same elements converted to another precision.
    public func cast<T: BLASScalar>(to: T.Type = T.self) -> Tensor<T> {
        if let same = self as? Tensor<T> { return same }
        return Tensor<T>(shape: shape, scalars: withUnsafeBufferPointer { $0.map { T(Double($0)) } })
    }

    /// Same shape and the same elements, wherever they live.
    public static func == (a: Tensor, b: Tensor) -> Bool {
        a.shape == b.shape && a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in pa.elementsEqual(pb) } }
    }
}

/// A tensor whose precision is known only at run time (decoded from a request).
public enum AnyTensor: Sendable, Equatable {
    case float32(Tensor<Float>)
    case float64(Tensor<Double>)

    /// Extent of every axis.
    public var shape: [Int] {
        switch self {
        case .float32(let t): t.shape
        case .float64(let t): t.shape
        }
    }

    /// The element precision.
    public var dtype: DType {
        switch self {
        case .float32: .float32
        case .float64: .float64
        }
    }

    /// The elements converted to `T` (no copy when already `T`).
    public func cast<T: BLASScalar>(to: T.Type = T.self) -> Tensor<T> {
        switch self {
        case .float32(let t): t.cast(to: T.self)
        case .float64(let t): t.cast(to: T.self)
        }
    }

    /// Bytes of the elements.
    public var byteCount: Int { (Shape.elementCount(shape) ?? 0) * dtype.byteCount }

    /// Calls `body` with the elements' bytes (little-endian, as on the wire), without copying.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        switch self {
        case .float32(let t): try t.withUnsafeBufferPointer { try body(UnsafeRawBufferPointer($0)) }
        case .float64(let t): try t.withUnsafeBufferPointer { try body(UnsafeRawBufferPointer($0)) }
        }
    }

    /// Rows `r` of the leading axis.
    public func rows(_ r: Range<Int>) -> AnyTensor {
        switch self {
        case .float32(let t): .float32(t.rows(r))
        case .float64(let t): .float64(t.rows(r))
        }
    }

    /// Wraps a typed tensor.
    public init<S: BLASScalar>(_ t: Tensor<S>) {
        if let f = t as? Tensor<Float> {
            self = .float32(f)
        } else {
            self = .float64(t.cast(to: Double.self))
        }
    }
}
