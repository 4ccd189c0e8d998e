import Dispatch

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Intra-request parallelism: a batch is split into row chunks computed at once, each on one
/// OpenBLAS thread. Per-sample work (forward, VJP, JVP, Jacobians, exact divergences) is
/// independent across rows, so the chunks need no communication; parameter gradients are summed.
///
/// Measured here, two OpenBLAS threads on the ToyMLP's small GEMMs were slower than one
/// (forward B = 256: 0.82 ms vs 0.64 ms); two row chunks on one thread each use both cores.
///
/// How many chunks is a value that travels with the computation, not a process setting: the
/// compute pool runs each request inside ``run(threads:_:)`` with its own `--threads-per-request`,
/// a benchmark with its `--threads`, a test with whatever it compares. Inside a chunk the value
/// is 1 again, so chunks never split further.
public enum Parallel {
    /// Row chunks for a computation on this thread: the value of the innermost
    /// ``run(threads:_:)``, or 1 (no splitting) outside any.
    public static var threads: Int { Swift.max(1, Int(bitPattern: pthread_getspecific(key))) }

    /// Runs `body` with computations on this thread split into `threads` row chunks.
    public static func run<R, E: Error>(threads: Int, _ body: () throws(E) -> R) throws(E) -> R {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, UnsafeRawPointer(bitPattern: Swift.max(1, threads)))
        defer { pthread_setspecific(key, previous) }
        return try body()
    }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// The chunks for a batch of `b` rows, or nil when the batch is not worth splitting.
    static func chunks(_ b: Int) -> [Range<Int>]? {
        let n = min(threads, b)
        guard n > 1 else { return nil }
        return (0..<n).map { i in (i * b / n)..<((i + 1) * b / n) }
    }

    /// `body` on every chunk at once; the first error is rethrown.
    static func forEach(_ chunks: [Range<Int>], _ body: (Range<Int>) throws(GradError) -> Void) throws(GradError) {
        _ = try map(chunks, body)
    }

    /// `body` on every chunk at once; results in chunk order. The first error is rethrown. The
    /// chunks obey the caller's cancellation token (it is per thread, so it is handed on); they
    /// never take their results from a ``ResultArena`` (the chunks' results are joined afterwards).
    static func map<R>(_ chunks: [Range<Int>], _ body: (Range<Int>) throws(GradError) -> R) throws(GradError) -> [R] {
        let token = Cancellation.current
        var results = [Result<R, GradError>?](repeating: nil, count: chunks.count)
        withoutActuallyEscaping(body) { body in
            let run: (Range<Int>) -> Result<R, GradError> = { r in
                let previous = Cancellation.install(token)
                defer { Cancellation.install(previous) }
                return ResultArena.run(nil) { () -> Result<R, GradError> in
                    do throws(GradError) { return .success(try body(r)) } catch { return .failure(error) }
                }
            }
            results.withUnsafeMutableBufferPointer { out in
                // Each iteration writes only its own slot; concurrentPerform returns after all have run.
                let shared = Unchecked((out.baseAddress!, run))
                DispatchQueue.concurrentPerform(iterations: chunks.count) { i in
                    let (base, run) = shared.value
                    base[i] = run(chunks[i])
                }
            }
        }
        return try results.map { (r) throws(GradError) -> R in try r!.get() }
    }
}

extension Tensor {
    /// Tensors joined along the leading axis.
    static func concatenate(_ parts: [Tensor]) -> Tensor {
        var scalars: [Scalar] = []
        scalars.reserveCapacity(parts.reduce(0) { $0 + $1.count })
        for p in parts { p.withUnsafeBufferPointer { scalars += $0 } }
        return Tensor(shape: [parts.reduce(0) { $0 + $1.shape[0] }] + parts[0].shape.dropFirst(), scalars: scalars)
    }
}

extension Inputs {
    func rows(_ r: Range<Int>) -> Inputs { Inputs(x: x.rows(r), t: t?.rows(r)) }
}

/// A value handed to concurrent iterations that each touch a disjoint part of it.
private struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
