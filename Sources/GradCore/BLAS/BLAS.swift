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
    /// Row-major `C = alpha * op(A) * op(B) + beta * C`.
    static func rawGEMM(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Self,
        _ a: UnsafePointer<Self>, _ lda: Int, _ b: UnsafePointer<Self>, _ ldb: Int,
        _ beta: Self, _ c: UnsafeMutablePointer<Self>, _ ldc: Int)
    /// Row-major `y = alpha * op(A) * x + beta * y` with strides.
    static func rawGEMV(
        _ transA: Bool, _ m: Int, _ n: Int, _ alpha: Self, _ a: UnsafePointer<Self>, _ lda: Int,
        _ x: UnsafePointer<Self>, _ incx: Int, _ beta: Self, _ y: UnsafeMutablePointer<Self>, _ incy: Int)
    /// Creates a value from a `Double`, rounding to the nearest representable value.
    init(_ value: Double)
}

@inline(__always)
private func cblasTranspose(_ t: Bool) -> CBLAS_TRANSPOSE { t ? CblasTrans : CblasNoTrans }

extension Float: BLASScalar {
    /// `float32`.
    public static var dtype: DType { .float32 }
    /// `cblas_sgemm`, row-major.
    @inline(__always)
    public static func rawGEMM(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor, cblasTranspose(transA), cblasTranspose(transB), Int32(m), Int32(n), Int32(k),
            alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
    /// `cblas_sgemv`, row-major.
    @inline(__always)
    public static func rawGEMV(
        _ transA: Bool, _ m: Int, _ n: Int, _ alpha: Float, _ a: UnsafePointer<Float>, _ lda: Int,
        _ x: UnsafePointer<Float>, _ incx: Int, _ beta: Float, _ y: UnsafeMutablePointer<Float>, _ incy: Int
    ) {
        cblas_sgemv(
            CblasRowMajor, cblasTranspose(transA), Int32(m), Int32(n), alpha, a, Int32(lda), x, Int32(incx),
            beta, y, Int32(incy))
    }
}

extension Double: BLASScalar {
    /// `float64`.
    public static var dtype: DType { .float64 }
    /// `cblas_dgemm`, row-major.
    @inline(__always)
    public static func rawGEMM(
        _ transA: Bool, _ transB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Double,
        _ a: UnsafePointer<Double>, _ lda: Int, _ b: UnsafePointer<Double>, _ ldb: Int,
        _ beta: Double, _ c: UnsafeMutablePointer<Double>, _ ldc: Int
    ) {
        cblas_dgemm(
            CblasRowMajor, cblasTranspose(transA), cblasTranspose(transB), Int32(m), Int32(n), Int32(k),
            alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
    /// `cblas_dgemv`, row-major.
    @inline(__always)
    public static func rawGEMV(
        _ transA: Bool, _ m: Int, _ n: Int, _ alpha: Double, _ a: UnsafePointer<Double>, _ lda: Int,
        _ x: UnsafePointer<Double>, _ incx: Int, _ beta: Double, _ y: UnsafeMutablePointer<Double>, _ incy: Int
    ) {
        cblas_dgemv(
            CblasRowMajor, cblasTranspose(transA), Int32(m), Int32(n), alpha, a, Int32(lda), x, Int32(incx),
            beta, y, Int32(incy))
    }
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
