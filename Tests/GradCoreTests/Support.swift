import Foundation
import GradCodec
import GradCore
import Testing

/// Largest |a − b| relative to the largest |b| (norm-relative, robust to near-zero entries).
func relativeError<S: BLASScalar>(_ a: [S], _ b: [S]) -> Double {
    precondition(a.count == b.count, "relativeError: \(a.count) vs \(b.count) elements")
    var diff = 0.0
    var scale = 0.0
    for i in a.indices {
        diff = max(diff, abs(Double(a[i]) - Double(b[i])))
        scale = max(scale, abs(Double(b[i])))
    }
    return diff / max(scale, 1e-300)
}

/// Expects `a` to equal `b` in shape and, element-wise, within `tol` norm-relative error.
func expectClose<S: BLASScalar>(
    _ a: Tensor<S>?, _ b: Tensor<S>?, tol: Double, _ what: String, sourceLocation: SourceLocation = #_sourceLocation
) {
    guard let a, let b else {
        Issue.record("\(what): missing tensor (got \(a == nil ? "nil" : "value"), expected \(b == nil ? "nil" : "value"))", sourceLocation: sourceLocation)
        return
    }
    #expect(a.shape == b.shape, "\(what): shape", sourceLocation: sourceLocation)
    guard a.shape == b.shape else { return }
    let err = relativeError(a.scalars, b.scalars)
    #expect(err <= tol, "\(what): relative error \(err) > \(tol)", sourceLocation: sourceLocation)
}

/// Parses JSON text, failing the test on a parse error.
func json(_ text: String) throws -> JSONValue { try JSONParser.parse(text) }

/// Builds a model from model-format JSON text.
func model(_ text: String) throws -> AnyModel { try ModelDecoder.decode(try json(text)) }

/// A deterministic generator for test data.
struct TestRNG {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> Double {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Double(state >> 11) / Double(1 << 53) * 2 - 1
    }
    mutating func tensor<S: BLASScalar>(_ shape: [Int], scale: Double = 1) -> Tensor<S> {
        Tensor(shape: shape, scalars: (0..<shape.reduce(1, *)).map { _ in S(next() * scale) })
    }
}

/// A JSON nested array of random numbers.
func randomJSON(_ shape: [Int], _ rng: inout TestRNG, scale: Double = 1) -> String {
    if shape.count == 1 { return "[" + (0..<shape[0]).map { _ in String(rng.next() * scale) }.joined(separator: ",") + "]" }
    return "[" + (0..<shape[0]).map { _ in randomJSON(Array(shape.dropFirst()), &rng, scale: scale) }.joined(separator: ",") + "]"
}
