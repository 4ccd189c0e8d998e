/// A contiguous, row-major tensor of `Float` or `Double`.
public struct Tensor<Scalar: BLASScalar>: Sendable, Equatable {
    /// Extent of every axis, outermost first.
    public var shape: [Int]
    /// The elements in row-major order; `scalars.count` is the product of `shape`.
    public var scalars: [Scalar]

    /// Wraps `scalars` with `shape`. The caller guarantees the element count matches.
    public init(shape: [Int], scalars: [Scalar]) {
        precondition(shape.reduce(1, *) == scalars.count, "Tensor: \(shape) does not hold \(scalars.count) elements")
        self.shape = shape
        self.scalars = scalars
    }

    /// A tensor of zeros.
    public init(zeros shape: [Int]) {
        self.init(shape: shape, scalars: [Scalar](repeating: 0, count: shape.reduce(1, *)))
    }

    /// Number of elements.
    public var count: Int { scalars.count }
    /// Number of axes.
    public var rank: Int { shape.count }

    /// The same elements converted to another precision.
    public func cast<T: BLASScalar>(to: T.Type = T.self) -> Tensor<T> {
        if let same = self as? Tensor<T> { return same }
        return Tensor<T>(shape: shape, scalars: scalars.map { T(Double($0)) })
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
