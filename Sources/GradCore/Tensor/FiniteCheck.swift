/// Finite checks over whole tensors, run on every input: a branch-free OR over the exponent
/// bits that the compiler vectorizes, then a scalar search only when something is wrong.
public enum FiniteCheck {
    /// The flat index of the first NaN or infinity, or nil.
    @inlinable public static func firstNonFinite<S: BLASScalar>(_ a: [S]) -> Int? {
        a.withUnsafeBufferPointer { firstNonFinite($0) }
    }

    /// The flat index of the first NaN or infinity of a tensor (borrowed or not), or nil.
    @inlinable public static func firstNonFinite<S: BLASScalar>(_ t: Tensor<S>) -> Int? {
        t.withUnsafeBufferPointer { firstNonFinite($0) }
    }

    /// The flat index of the first NaN or infinity, or nil.
    @inlinable public static func firstNonFinite<S: BLASScalar>(_ p: UnsafeBufferPointer<S>) -> Int? {
        guard let base = p.baseAddress else { return nil }
        let allFinite: Bool
        if S.self == Float.self {
            let bits = UnsafeRawPointer(base).assumingMemoryBound(to: UInt32.self)
            // An all-ones exponent plus one carries into the sign bit; any other does not.
            var bad: UInt32 = 0
            for i in 0..<p.count { bad |= (bits[i] & 0x7F80_0000) &+ 0x0080_0000 }
            allFinite = bad & 0x8000_0000 == 0
        } else if S.self == Double.self {
            let bits = UnsafeRawPointer(base).assumingMemoryBound(to: UInt64.self)
            var bad: UInt64 = 0
            for i in 0..<p.count { bad |= (bits[i] & 0x7FF0_0000_0000_0000) &+ 0x0010_0000_0000_0000 }
            allFinite = bad & 0x8000_0000_0000_0000 == 0
        } else {
            allFinite = p.allSatisfy { $0.isFinite }
        }
        return allFinite ? nil : p.firstIndex { !$0.isFinite }
    }
}
