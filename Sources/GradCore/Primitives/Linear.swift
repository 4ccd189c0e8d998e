extension OpDeclaration {
    /// `linear`: its fields are parameters (tensors or `weights` names), so it has no kernel.
    static let linear = OpDeclaration(
        parametric: "linear", formula: "x Wᵀ + b", pytorch: "nn.Linear",
        fields: [
            .parameter("weight", required: true, "[out, in] tensor, or the name of a weights entry"),
            .parameter("bias", required: false, "[out] tensor, or the name of a weights entry; absent for bias=False"),
        ])
}

/// `linear`: `y = x Wᵀ + b` with PyTorch's layout, weight `[out, in]`, bias `[out]`.
///
/// Forward, VJP and JVP rules side by side. Every product is one GEMM over all `K·B` rows,
/// with transposes as GEMM flags.
public struct Linear<S: BLASScalar>: Sendable, Equatable {
    /// `[out, in]`, row-major.
    public let weight: Tensor<S>
    /// `[out]`, or nil for `bias=False`.
    public let bias: Tensor<S>?
    /// Parameter name of the weight (`net.0.weight` or `layers.<i>.weight`).
    public let weightName: String
    /// Parameter name of the bias.
    public let biasName: String?

    /// Output features.
    public var outFeatures: Int { weight.shape[0] }
    /// Input features.
    public var inFeatures: Int { weight.shape[1] }

    /// Creates a linear layer; shapes are checked by ``ModelBuilder``.
    public init(weight: Tensor<S>, bias: Tensor<S>?, weightName: String, biasName: String?) {
        self.weight = weight
        self.bias = bias
        self.weightName = weightName
        self.biasName = biasName
    }

    /// Forward: `Y[rows, out] = X[rows, in] Wᵀ + b`.
    func forward(_ x: UnsafePointer<S>, rows: Int, into y: UnsafeMutablePointer<S>) {
        let out = outFeatures
        let beta: S
        if let bias {
            bias.withUnsafeBufferPointer { b in
                for r in 0..<rows { (y + r * out).update(from: b.baseAddress!, count: out) }
            }
            beta = 1
        } else {
            beta = 0
        }
        weight.withUnsafeBufferPointer { w in
            BLAS.gemm(
                MatrixView(x, rows: rows, cols: inFeatures), MatrixView(w.baseAddress!, rows: out, cols: inFeatures),
                transposeB: true, into: MutableMatrixView(y, rows: rows, cols: out), beta: beta)
        }
    }

    /// Forward of a first layer on `[x | t]` without building it: `x W[:, :D]ᵀ + t W[:, D]ᵀ + b`.
    /// Also the JVP rule of `linear ∘ concat` (with `bias: false`, a missing t tangent being zero).
    func forwardSplit(x: Tensor<S>, t: Tensor<S>?, rows: Int, bias useBias: Bool = true) -> [S] {
        let out = outFeatures
        let d = inFeatures - 1
        return [S](unsafeUninitializedCapacity: rows * out) { y, n in
            let yp = y.baseAddress!
            if useBias, let bias {
                bias.withUnsafeBufferPointer { b in
                    for r in 0..<rows { (yp + r * out).initialize(from: b.baseAddress!, count: out) }
                }
            } else {
                yp.initialize(repeating: 0, count: rows * out)
            }
            weight.withUnsafeBufferPointer { w in
                x.withUnsafeBufferPointer { xp in
                    BLAS.gemm(
                        MatrixView(xp.baseAddress!, rows: rows, cols: d), MatrixView(w.baseAddress!, rows: out, cols: d, stride: inFeatures),
                        transposeB: true, into: MutableMatrixView(yp, rows: rows, cols: out), beta: 1)
                }
                _ = t?.withUnsafeBufferPointer { tp in
                    BLAS.gemm(
                        MatrixView(tp.baseAddress!, rows: rows, cols: 1), MatrixView(w.baseAddress! + d, rows: out, cols: 1, stride: inFeatures),
                        transposeB: true, into: MutableMatrixView(yp, rows: rows, cols: out), beta: 1)
                }
            }
            n = rows * out
        }
    }

    /// JVP rule: `Ẏ = Ẋ Wᵀ` (the bias is constant). `columns` selects input columns `lo..<hi`
    /// of W when the tangent only spans part of the input.
    func jvp(_ tx: MatrixView<S>, into ty: UnsafeMutablePointer<S>, columns: Range<Int>? = nil) {
        let cols = columns ?? 0..<inFeatures
        weight.withUnsafeBufferPointer { w in
            BLAS.gemm(
                tx,
                MatrixView(w.baseAddress! + cols.lowerBound, rows: outFeatures, cols: cols.count, stride: inFeatures),
                transposeB: true, into: MutableMatrixView(ty, rows: tx.rows, cols: outFeatures))
        }
    }

    /// VJP rule with respect to the input: `X̄ = Ȳ W`, restricted to input columns `columns`,
    /// written with row stride `stride`.
    func vjpInput(_ gy: UnsafePointer<S>, rows: Int, into gx: UnsafeMutablePointer<S>, columns: Range<Int>, stride: Int) {
        weight.withUnsafeBufferPointer { w in
            BLAS.gemm(
                MatrixView(gy, rows: rows, cols: outFeatures),
                MatrixView(w.baseAddress! + columns.lowerBound, rows: outFeatures, cols: columns.count, stride: inFeatures),
                into: MutableMatrixView(gx, rows: rows, cols: columns.count, stride: stride))
        }
    }

    /// VJP rule with respect to the weight, summed over the batch like `loss.backward()`:
    /// `W̄ = Ȳᵀ X` (`[out, in]`). `gy` has `samples` rows with row stride `gyStride`.
    func vjpWeight(_ gy: UnsafePointer<S>, gyStride: Int, samples: Int, input x: UnsafePointer<S>, into weightGrad: UnsafeMutablePointer<S>) {
        BLAS.gemm(
            MatrixView(gy, rows: samples, cols: outFeatures, stride: gyStride), transposeA: true, MatrixView(x, rows: samples, cols: inFeatures),
            into: MutableMatrixView(weightGrad, rows: outFeatures, cols: inFeatures))
    }

    /// VJP rule with respect to the bias, summed over the batch: `b̄ = Ȳᵀ 1` (`ones` holds `samples` ones).
    func vjpBias(_ gy: UnsafePointer<S>, gyStride: Int, samples: Int, ones: UnsafePointer<S>, into biasGrad: UnsafeMutablePointer<S>) {
        BLAS.gemv(MatrixView(gy, rows: samples, cols: outFeatures, stride: gyStride), transpose: true, x: ones, into: biasGrad)
    }
}
