#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Memory for a computation's answer tensors, supplied by its caller: a server lends the body
/// buffer it will send, so that an answer is computed where it is sent from instead of being
/// copied there.
///
/// While an arena is installed on a thread (``run(_:_:)``), the transforms take the tensors they
/// return from it, in the order they produce them (forward: the outputs; VJP: the outputs, then
/// x̄, then t̄), each right after the previous one; a tensor that does not fit in what is left is
/// an array as usual. The tensors borrow the arena's memory (``Tensor/isBorrowed``) and keep its
/// owner alive. Row chunks computed at once (``Parallel``) never use it.
public final class ResultArena: @unchecked Sendable {
    /// The memory's start (aligned for every scalar type).
    public let base: UnsafeMutableRawPointer
    /// Its size in bytes.
    public let capacity: Int
    /// Bytes handed out so far, from ``base``.
    public private(set) var used = 0
    private let owner: AnyObject

    /// An arena over `capacity` writable bytes at `base`, which `owner` keeps alive; nothing else
    /// may touch them while the arena or one of its tensors is referenced.
    public init(base: UnsafeMutableRawPointer, capacity: Int, owner: AnyObject) {
        precondition(Int(bitPattern: base) % 16 == 0, "ResultArena: base must be 16-byte aligned")
        self.base = base
        self.capacity = capacity
        self.owner = owner
    }

    /// Runs `body` with `arena` (or none) installed on this thread.
    public static func run<R, E: Error>(_ arena: ResultArena?, _ body: () throws(E) -> R) throws(E) -> R {
        let previous = pthread_getspecific(key)
        pthread_setspecific(key, arena.map { UnsafeRawPointer(Unmanaged.passUnretained($0).toOpaque()) })
        defer { pthread_setspecific(key, previous) }
        return try withExtendedLifetime(arena) { () throws(E) -> R in try body() }
    }

    /// The arena installed on this thread, if any.
    static var current: ResultArena? {
        guard let p = pthread_getspecific(key) else { return nil }
        return Unmanaged<ResultArena>.fromOpaque(p).takeUnretainedValue()
    }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k, nil)
        return k
    }()

    /// The next `count` elements, or nil when they do not fit (or would be misaligned).
    fileprivate func take<S>(_ count: Int, as: S.Type) -> UnsafeMutableBufferPointer<S>? {
        let bytes = count * MemoryLayout<S>.stride
        guard used % MemoryLayout<S>.alignment == 0, bytes <= capacity - used else { return nil }
        let p = (base + used).bindMemory(to: S.self, capacity: count)
        used += bytes
        return UnsafeMutableBufferPointer(start: p, count: count)
    }
}

extension Tensor {
    /// A computation's answer: `fill` writes its `shape.product` elements, in the installed
    /// ``ResultArena`` when there is one with room, else in a new array.
    static func result(shape: [Int], _ fill: (UnsafeMutablePointer<Scalar>) -> Void) -> Tensor {
        let n = shape.reduce(1, *)
        if let arena = ResultArena.current, let region = arena.take(n, as: Scalar.self) {
            fill(region.baseAddress!)
            return Tensor(shape: shape, borrowing: UnsafeBufferPointer(region), owner: arena)
        }
        return Tensor(
            shape: shape,
            scalars: [Scalar](unsafeUninitializedCapacity: n) { p, count in
                fill(p.baseAddress!)
                count = n
            })
    }
}
