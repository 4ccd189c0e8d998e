/// `concat(x, t)`: the `inputs: ["x", "t"]` convention, t appended as the last feature column
/// (torchcfm's `MLP(time_varying=True)`).
///
/// Forward writes `[x | t]`; the JVP rule concatenates the tangents the same way; the VJP rule
/// splits a cotangent `[rows, D+1]` back into `x̄ [rows, D]` and `t̄ [rows]`. The sweeps fuse the
/// split into the first GEMM when the model starts with `linear` (see ``Linear/vjpInput``), so the
/// copy below only runs for models that start with an activation.
enum Concat {
    /// `[x | t]`: `x` is `[rows, width]`, `t` is `[rows]` (or nil for no t column).
    static func forward<S: BLASScalar>(x: UnsafePointer<S>, t: UnsafePointer<S>?, rows: Int, width: Int) -> [S] {
        guard let t else { return Array(UnsafeBufferPointer(start: x, count: rows * width)) }
        let w1 = width + 1
        return [S](unsafeUninitializedCapacity: rows * w1) { buf, n in
            let o = buf.baseAddress!
            for r in 0..<rows {
                (o + r * w1).initialize(from: x + r * width, count: width)
                (o + r * w1 + width).initialize(to: t[r])
            }
            n = rows * w1
        }
    }

    /// JVP rule: tangents concatenate like primals; a missing tangent is zero.
    static func jvp<S: BLASScalar>(x: UnsafePointer<S>?, t: UnsafePointer<S>?, rows: Int, width: Int, hasT: Bool) -> [S] {
        let w1 = hasT ? width + 1 : width
        var out = [S](repeating: 0, count: rows * w1)
        out.withUnsafeMutableBufferPointer { o in
            for r in 0..<rows {
                if let x { (o.baseAddress! + r * w1).update(from: x + r * width, count: width) }
                if hasT, let t { o[r * w1 + width] = t[r] }
            }
        }
        return out
    }

    /// VJP rule: splits `[rows, width(+1)]` into the x part and the t column.
    static func vjp<S: BLASScalar>(_ g: UnsafePointer<S>, rows: Int, width: Int, hasT: Bool) -> (x: [S], t: [S]?) {
        guard hasT else { return (Array(UnsafeBufferPointer(start: g, count: rows * width)), nil) }
        let w1 = width + 1
        var gx = [S](repeating: 0, count: rows * width)
        var gt = [S](repeating: 0, count: rows)
        gx.withUnsafeMutableBufferPointer { x in
            gt.withUnsafeMutableBufferPointer { t in
                for r in 0..<rows {
                    (x.baseAddress! + r * width).update(from: g + r * w1, count: width)
                    t[r] = g[r * w1 + width]
                }
            }
        }
        return (gx, gt)
    }
}
