/// The transforms on a model whose precision is known at run time. Inputs of another dtype are
/// cast to the model's; results are in the model's dtype. Calling through here (rather than the
/// generic `Model<S>` methods from another module) runs the float32/float64-specialized code.
extension AnyModel {
    /// Inputs of any dtype.
    public struct Arguments: Sendable {
        /// `[B, D]`.
        public var x: AnyTensor
        /// `[B]`, for models with t.
        public var t: AnyTensor?
        /// Creates arguments.
        public init(x: AnyTensor, t: AnyTensor? = nil) {
            self.x = x
            self.t = t
        }
    }

    /// A VJP answer.
    public struct VJP: Sendable {
        /// `[B, D']`, unless not asked for.
        public var outputs: AnyTensor?
        /// `[B, D]` (`[K, B, D]` K-batched), when asked for.
        public var x: AnyTensor?
        /// `[B]` (`[K, B]`), when asked for.
        public var t: AnyTensor?
        /// Parameter gradients in layer order, summed over the batch.
        public var params: [(name: String, grad: AnyTensor)]
    }

    /// A JVP answer.
    public struct JVP: Sendable {
        /// `[B, D']`, unless not asked for.
        public var outputs: AnyTensor?
        /// `[B, D']` (`[K, B, D']` K-batched).
        public var jvp: AnyTensor
    }

    /// A Jacobian answer.
    public struct Jacobian: Sendable {
        /// `[B, D']`.
        public var outputs: AnyTensor
        /// `[B, D', D]`, when asked for.
        public var x: AnyTensor?
        /// `[B, D']`, when asked for.
        public var t: AnyTensor?
        /// The mode the sweep ran in.
        public var mode: JacobianMode
    }

    private func inputs<S: BLASScalar>(_ a: Arguments, _: S.Type) -> Inputs<S> { Inputs(x: a.x.cast(), t: a.t?.cast()) }

    /// `f(x, t)`.
    public func forward(_ a: Arguments) throws(GradError) -> AnyTensor {
        switch self {
        case .float32(let m): AnyTensor(try m.forward(inputs(a, Float.self)))
        case .float64(let m): AnyTensor(try m.forward(inputs(a, Double.self)))
        }
    }

    /// See ``Model/vjp(_:gradOutputs:isGradsBatched:wrt:returnOutputs:)``.
    public func vjp(_ a: Arguments, gradOutputs: AnyTensor, isGradsBatched: Bool, wrt: Set<GradTarget>, returnOutputs: Bool) throws(GradError) -> VJP {
        func wrap<S>(_ r: VJPResult<S>) -> VJP {
            VJP(
                outputs: r.outputs.map(AnyTensor.init), x: r.x.map(AnyTensor.init), t: r.t.map(AnyTensor.init),
                params: r.params.map { ($0.name, AnyTensor($0.grad)) })
        }
        switch self {
        case .float32(let m):
            return wrap(
                try m.vjp(inputs(a, Float.self), gradOutputs: gradOutputs.cast(), isGradsBatched: isGradsBatched, wrt: wrt, returnOutputs: returnOutputs))
        case .float64(let m):
            return wrap(
                try m.vjp(inputs(a, Double.self), gradOutputs: gradOutputs.cast(), isGradsBatched: isGradsBatched, wrt: wrt, returnOutputs: returnOutputs))
        }
    }

    /// See ``Model/jvp(_:tangentX:tangentT:returnOutputs:)``.
    public func jvp(_ a: Arguments, tangentX: AnyTensor?, tangentT: AnyTensor?, returnOutputs: Bool) throws(GradError) -> JVP {
        switch self {
        case .float32(let m):
            let r = try m.jvp(inputs(a, Float.self), tangentX: tangentX?.cast(), tangentT: tangentT?.cast(), returnOutputs: returnOutputs)
            return JVP(outputs: r.outputs.map(AnyTensor.init), jvp: AnyTensor(r.jvp))
        case .float64(let m):
            let r = try m.jvp(inputs(a, Double.self), tangentX: tangentX?.cast(), tangentT: tangentT?.cast(), returnOutputs: returnOutputs)
            return JVP(outputs: r.outputs.map(AnyTensor.init), jvp: AnyTensor(r.jvp))
        }
    }

    /// See ``Model/jacobian(_:wrt:mode:)``.
    public func jacobian(_ a: Arguments, wrt: Set<GradTarget>, mode: JacobianMode) throws(GradError) -> Jacobian {
        func wrap<S>(_ r: JacobianResult<S>) -> Jacobian {
            Jacobian(outputs: AnyTensor(r.outputs), x: r.x.map(AnyTensor.init), t: r.t.map(AnyTensor.init), mode: r.mode)
        }
        switch self {
        case .float32(let m): return wrap(try m.jacobian(inputs(a, Float.self), wrt: wrt, mode: mode))
        case .float64(let m): return wrap(try m.jacobian(inputs(a, Double.self), wrt: wrt, mode: mode))
        }
    }

    /// See ``Model/divergence(_:method:)``.
    public func divergence(_ a: Arguments, method: DivergenceMethod) throws(GradError) -> AnyTensor {
        switch self {
        case .float32(let m): AnyTensor(try m.divergence(inputs(a, Float.self), method: method))
        case .float64(let m): AnyTensor(try m.divergence(inputs(a, Double.self), method: method))
        }
    }

    /// The mode `auto` resolves to for this batch.
    public func resolve(_ mode: JacobianMode, batch: Int, d: Int, wantX: Bool, wantT: Bool) -> JacobianMode {
        switch self {
        case .float32(let m): m.resolve(mode, batch: batch, d: d, wantX: wantX, wantT: wantT)
        case .float64(let m): m.resolve(mode, batch: batch, d: d, wantX: wantX, wantT: wantT)
        }
    }
}
