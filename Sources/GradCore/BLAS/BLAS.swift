import COpenBLAS
import RealModule

/// A floating-point scalar that OpenBLAS computes with: `Float` (`float32`) or `Double` (`float64`).
///
/// This is the only file that imports `COpenBLAS`; everything else calls the typed,
/// size-checked wrappers in ``BLAS``.
public protocol BLASScalar: Real, BinaryFloatingPoint, Sendable
where RawSignificand: FixedWidthInteger {
    /// The dtype name used in the model format and on the wire.
    static var dtype: DType { get }
    /// OpenBLAS' GEMM for this precision (`cblas_sgemm` or `cblas_dgemm`).
    static var cblasGEMM: CBLASGEMM<Self> { get }
    /// OpenBLAS' GEMV for this precision (`cblas_sgemv` or `cblas_dgemv`).
    static var cblasGEMV: CBLASGEMV<Self> { get }
    /// Creates a value from a `Double`, rounding to the nearest representable value.
    init(_ value: Double)
}

/// The C signature of `cblas_?gemm`.
public typealias CBLASGEMM<S> = (
    CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, blasint, blasint, blasint, S, UnsafePointer<S>?, blasint, UnsafePointer<S>?, blasint,
    S, UnsafeMutablePointer<S>?, blasint
) -> Void

/// The C signature of `cblas_?gemv`.
public typealias CBLASGEMV<S> = (
    CBLAS_ORDER, CBLAS_TRANSPOSE, blasint, blasint, S, UnsafePointer<S>?, blasint, UnsafePointer<S>?, blasint, S, UnsafeMutablePointer<S>?, blasint
) -> Void

extension BLASScalar {
    /// Row-major `C = alpha * op(A) * op(B) + beta * C`.
    @inline(__always)
    static func rawGEMM(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Self,
        _ a: UnsafePointer<Self>, _ lda: Int, _ b: UnsafePointer<Self>, _ ldb: Int,
        _ beta: Self, _ c: UnsafeMutablePointer<Self>, _ ldc: Int
    ) {
        cblasGEMM(
            CblasRowMajor, cblasTranspose(transA), cblasTranspose(transB), blasint(m), blasint(n), blasint(k),
            alpha, a, blasint(lda), b, blasint(ldb), beta, c, blasint(ldc))
    }

    /// Row-major `y = alpha * op(A) * x + beta * y` with strides.
    @inline(__always)
    static func rawGEMV(
        _ transA: Bool, _ m: Int, _ n: Int, _ alpha: Self, _ a: UnsafePointer<Self>, _ lda: Int,
        _ x: UnsafePointer<Self>, _ incx: Int, _ beta: Self, _ y: UnsafeMutablePointer<Self>, _ incy: Int
    ) {
        cblasGEMV(
            CblasRowMajor, cblasTranspose(transA), blasint(m), blasint(n), alpha, a, blasint(lda), x, blasint(incx), beta, y, blasint(incy))
    }
}

@inline(__always)
private func cblasTranspose(_ t: Bool) -> CBLAS_TRANSPOSE { t ? CblasTrans : CblasNoTrans }

extension Float: BLASScalar {
    /// `float32`.
    public static var dtype: DType { .float32 }
    /// `cblas_sgemm`.
    public static var cblasGEMM: CBLASGEMM<Float> { cblas_sgemm }
    /// `cblas_sgemv`.
    public static var cblasGEMV: CBLASGEMV<Float> { cblas_sgemv }
}

extension Double: BLASScalar {
    /// `float64`.
    public static var dtype: DType { .float64 }
    /// `cblas_dgemm`.
    public static var cblasGEMM: CBLASGEMM<Double> { cblas_dgemm }
    /// `cblas_dgemv`.
    public static var cblasGEMV: CBLASGEMV<Double> { cblas_dgemv }
}

/// A read-only row-major matrix view: `rows × cols` with `stride` elements between rows.
public struct MatrixView<S: BLASScalar> {
    /// First element.
    public let base: UnsafePointer<S>
    /// Rows.
    public let rows: Int
    /// Columns.
    public let cols: Int
    /// Elements between the starts of consecutive rows.
    public let stride: Int
    /// A view of `rows × cols` at `base`; `stride` defaults to `cols`.
    @inline(__always)
    public init(_ base: UnsafePointer<S>, rows: Int, cols: Int, stride: Int? = nil) {
        self.base = base
        self.rows = rows
        self.cols = cols
        self.stride = stride ?? cols
    }
}

/// A writable row-major matrix view.
public struct MutableMatrixView<S: BLASScalar> {
    /// First element.
    public let base: UnsafeMutablePointer<S>
    /// Rows.
    public let rows: Int
    /// Columns.
    public let cols: Int
    /// Elements between the starts of consecutive rows.
    public let stride: Int
    /// A view of `rows × cols` at `base`; `stride` defaults to `cols`.
    @inline(__always)
    public init(_ base: UnsafeMutablePointer<S>, rows: Int, cols: Int, stride: Int? = nil) {
        self.base = base
        self.rows = rows
        self.cols = cols
        self.stride = stride ?? cols
    }
}

/// Typed, size-checked BLAS calls. Transposes are GEMM flags, never copies.
public enum BLAS {
    /// `C = alpha * op(A) * op(B) + beta * C`, with `op` the optional transpose.
    @inline(__always)
    public static func gemm<S: BLASScalar>(
        _ a: MatrixView<S>, transposeA transA: Bool = false,
        _ b: MatrixView<S>, transposeB transB: Bool = false,
        into c: MutableMatrixView<S>, alpha: S = 1, beta: S = 0
    ) {
        let m = transA ? a.cols : a.rows
        let k = transA ? a.rows : a.cols
        let kb = transB ? b.cols : b.rows
        let n = transB ? b.rows : b.cols
        precondition(k == kb && c.rows == m && c.cols == n, "gemm: shape mismatch")
        precondition(a.stride >= max(1, a.cols) && b.stride >= max(1, b.cols) && c.stride >= max(1, c.cols))
        if m == 0 || n == 0 { return }
        if k == 0 {
            scale(c, by: beta)
            return
        }
        S.rawGEMM(transA, transB, m, n, k, alpha, a.base, a.stride, b.base, b.stride, beta, c.base, c.stride)
    }

    /// `y = alpha * op(A) * x + beta * y`, with element strides on x and y.
    @inline(__always)
    public static func gemv<S: BLASScalar>(
        _ a: MatrixView<S>, transpose transA: Bool = false,
        x: UnsafePointer<S>, xStride: Int = 1, into y: UnsafeMutablePointer<S>, yStride: Int = 1,
        alpha: S = 1, beta: S = 0
    ) {
        precondition(a.stride >= max(1, a.cols) && xStride >= 1 && yStride >= 1)
        if a.rows == 0 || a.cols == 0 { return }
        S.rawGEMV(transA, a.rows, a.cols, alpha, a.base, a.stride, x, xStride, beta, y, yStride)
    }

    private static func scale<S: BLASScalar>(_ c: MutableMatrixView<S>, by beta: S) {
        for r in 0..<c.rows {
            let row = c.base + r * c.stride
            for j in 0..<c.cols { row[j] = beta == 0 ? 0 : row[j] * beta }
        }
    }
}

/// What the process's BLAS library says of itself, and its thread setting.
public enum BLASRuntime {
    /// Library name and build configuration string (e.g. `OpenBLAS 0.3.21 NO_AFFINITY Haswell MAX_THREADS=64`).
    public static var config: String { String(cString: openblas_get_config()) }
    /// The CPU kernel family OpenBLAS selected (e.g. `Haswell`).
    public static var coreName: String { String(cString: openblas_get_corename()) }
    /// The threads OpenBLAS uses for one call.
    public static var threads: Int { Int(openblas_get_num_threads()) }
    /// The processors OpenBLAS sees.
    public static var processors: Int { Int(openblas_get_num_procs()) }
    /// Sets the threads OpenBLAS uses for one call (process-wide).
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(max(1, n))) }
    /// The library version parsed from `config` (e.g. `0.3.21`), or `"unknown"`.
    public static var version: String {
        let parts = config.split(separator: " ")
        if parts.count > 1, parts[0] == "OpenBLAS" { return String(parts[1]) }
        return "unknown"
    }
}
