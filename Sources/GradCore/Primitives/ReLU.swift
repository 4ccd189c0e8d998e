/// `relu(z) = max(z, 0)`; derivative 1 for z > 0 and 0 otherwise (PyTorch: relu'(0) = 0).
struct ReLURule: ElementwiseRule {
    @inline(__always)
    func evaluate<S: BLASScalar>(_ z: S) -> (value: S, derivative: S) {
        z > 0 ? (z, 1) : (0, 0)
    }
}
