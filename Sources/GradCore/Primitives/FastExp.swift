/// `eˣ` for the activation rules: a branch-free polynomial for `Float` that the compiler
/// vectorizes, and libm for `Double`.
///
/// Why not libm for `Float` too: `expm1f` alone was 24% of a ToyMLP forward at B = 256 (perf),
/// one scalar call per element. This is Cephes' `expf` (range reduction by ln 2 split in two,
/// degree-5 polynomial), accurate to about 2 ulp over [−87, 88] — far inside the float32
/// tolerance against PyTorch (1e-5), whose own CPU kernels use a vectorized exp as well.
@inline(__always)
func fastExp<S: BLASScalar>(_ x: S) -> S {
    if S.self == Float.self { return unsafeBitCast(fastExpFloat(unsafeBitCast(x, to: Float.self)), to: S.self) }
    return S.exp(x)
}

@inline(__always)
func fastExpFloat(_ x: Float) -> Float {
    let x = Swift.min(Swift.max(x, -87.33654), 88.0)
    // n = round(x / ln 2) via the 1.5·2²³ trick: the low mantissa bits of t hold n.
    let t = x * 1.442_695_040_888_963_4 + 12_582_912.0
    let n = t - 12_582_912.0
    var r = x - n * 0.693_359_375
    r = r + n * 2.121_944_4e-4
    var p: Float = 1.987_569_15e-4
    p = p * r + 1.398_199_950_7e-3
    p = p * r + 8.333_451_907_3e-3
    p = p * r + 4.166_579_589_4e-2
    p = p * r + 1.666_666_545_9e-1
    p = p * r + 5.000_000_120_1e-1
    let y = p * (r * r) + r + 1
    let scale = Float(bitPattern: (t.bitPattern &- 0x4B40_0000 &+ 127) << 23)
    return y * scale
}
