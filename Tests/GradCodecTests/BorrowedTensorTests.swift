import GradCodec
import GradCore
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Bytes that stand for a request body: freed when the last reference goes, and counted, so a
/// test can tell when a borrowing tensor let go of them.
private final class Body {
    nonisolated(unsafe) static var freed = 0
    let memory: UnsafeMutableRawBufferPointer
    /// The file's bytes start `offset` bytes into the (16-byte aligned) allocation.
    init(_ bytes: [UInt8], offset: Int) {
        memory = .allocate(byteCount: bytes.count + offset, alignment: 16)
        memory.initializeMemory(as: UInt8.self, repeating: 0xAB)
        UnsafeMutableRawBufferPointer(rebasing: memory[offset...]).copyMemory(from: bytes.withUnsafeBytes { $0 })
        self.offset = offset
    }
    let offset: Int
    var file: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: memory[offset...]) }
    deinit {
        memory.deallocate()
        Body.freed += 1
    }
}

/// Tensors decoded from a safetensors body borrow its memory when aligned and read exactly as
/// copies do; writing, slicing, casting and every derivative work the same on them.
@Suite("Borrowed tensors", .serialized)
struct BorrowedTensorTests {
    let d = 5
    let b = 4

    func file(_ x: Tensor<Float>, _ t: Tensor<Float>, _ v: Tensor<Float>) -> [UInt8] {
        Safetensors.write([("inputs.x", .float32(x)), ("inputs.t", .float32(t)), ("grad_outputs", .float32(v))], metadata: [])
    }

    func random(_ shape: [Int], seed: UInt64) -> Tensor<Float> {
        var state = seed
        return Tensor(
            shape: shape,
            scalars: (0..<shape.reduce(1, *)).map { _ in
                state = state &* 6364136223846793005 &+ 1442695040888963407
                return Float(Double(state >> 11) / Double(1 << 53) * 2 - 1)
            })
    }

    func typed(_ t: AnyTensor?) -> Tensor<Float> {
        guard case .float32(let f)? = t else { fatalError("expected a float32 tensor") }
        return f
    }

    @Test("aligned data is borrowed, misaligned data copied; both equal the written tensors")
    func alignment() throws {
        let (x, t, v) = (random([b, d], seed: 1), random([b], seed: 2), random([b, d], seed: 3))
        let bytes = file(x, t, v)
        for offset in 0..<8 {
            let body = Body(bytes, offset: offset)
            let read = try Safetensors.read(body.file, owner: body)
            let copied = try Safetensors.read(body.file)
            // The data section starts 8 + header bytes (a multiple of 8) into the file.
            #expect(typed(read.tensors["inputs.x"]).isBorrowed == (offset % 4 == 0), "offset \(offset)")
            #expect(!typed(copied.tensors["inputs.x"]).isBorrowed)
            #expect(typed(read.tensors["inputs.x"]) == x && typed(read.tensors["inputs.t"]) == t && typed(read.tensors["grad_outputs"]) == v)
            #expect(typed(copied.tensors["inputs.x"]) == x)
        }
    }

    @Test("a borrowing tensor keeps the body alive, and lets it go with its last copy")
    func lifetime() throws {
        let x = random([b, d], seed: 4)
        let before = Body.freed
        var kept: Tensor<Float>?
        do {
            let body = Body(file(x, random([b], seed: 5), random([b, d], seed: 6)), offset: 0)
            kept = typed(try Safetensors.read(body.file, owner: body).tensors["inputs.x"])
        }
        #expect(Body.freed == before, "the body was freed while a tensor borrowed it")
        #expect(kept == x)
        let rows = kept!.rows(1..<3)
        kept = nil
        #expect(Body.freed == before, "the body was freed while a row slice borrowed it")
        #expect(rows.isBorrowed && rows == x.rows(1..<3) && rows.shape == [2, d])
        _ = consume rows
        #expect(Body.freed == before + 1)
    }

    @Test("writing moves the elements into an array; the body is never written")
    func copyOnWrite() throws {
        let x = random([b, d], seed: 7)
        let body = Body(file(x, random([b], seed: 8), random([b, d], seed: 9)), offset: 0)
        let original = typed(try Safetensors.read(body.file, owner: body).tensors["inputs.x"])
        var a = original
        a.scalars[0] = 42
        #expect(!a.isBorrowed && a.scalars[0] == 42 && Array(a.scalars[1...]) == Array(x.scalars[1...]))
        var m = original
        m.withUnsafeMutableBufferPointer { $0[1] = -1 }
        #expect(!m.isBorrowed && m.scalars[1] == -1)
        #expect(original.isBorrowed && original == x, "the body changed under a borrowing tensor")
        #expect(original.cast(to: Double.self) == x.cast(to: Double.self))
        #expect(original.count == x.count && original.scalars == x.scalars)
    }

    @Test("borrowed data the decoder checked is known finite, its rows too; a write, a cast or a copy is not")
    func knownFinite() throws {
        let x = random([b, d], seed: 13)
        let body = Body(file(x, random([b], seed: 14), random([b, d], seed: 15)), offset: 0)
        let read = typed(try Safetensors.read(body.file, owner: body).tensors["inputs.x"])
        #expect(read.isKnownFinite && read.rows(1..<3).isKnownFinite && read.reshaped([d, b]).isKnownFinite)
        var written = read
        written.scalars[0] = .infinity
        #expect(!written.isKnownFinite, "a written tensor must be checked again")
        #expect(!typed(try Safetensors.read(body.file).tensors["inputs.x"]).isKnownFinite, "copied data is not marked")
        #expect(!read.cast(to: Double.self).isKnownFinite, "a cast may overflow, so it is checked again")
        // The model still refuses a non-finite input it is handed, whatever its storage.
        let model = ToyMLP.make(d: d, width: 8, hidden: 1, seed: 3, as: Float.self)
        #expect(throws: GradError.self) { try model.forward(Inputs(x: written, t: random([b], seed: 16))) }
    }

    @Test("non-finite values in borrowed data are refused by name")
    func nonFinite() throws {
        var x = random([b, d], seed: 10)
        x.scalars[7] = .nan
        let body = Body(file(x, random([b], seed: 11), random([b, d], seed: 12)), offset: 0)
        #expect(throws: GradError.self) { try Safetensors.read(body.file, owner: body) }
    }

    @Test("forward, VJP (wrt x, t and params, K-batched too) and JVP give the same on borrowed and copied inputs")
    func derivatives() throws {
        let model = ToyMLP.make(d: d, width: 8, hidden: 1, seed: 3, as: Float.self)
        let (x, t, v) = (random([b, d], seed: 13), random([b], seed: 14), random([b, d], seed: 15))
        let vk = random([2, b, d], seed: 16)
        let bytes = Safetensors.write(
            [("inputs.x", .float32(x)), ("inputs.t", .float32(t)), ("grad_outputs", .float32(v)), ("batched", .float32(vk))], metadata: [])
        let body = Body(bytes, offset: 0)
        let file = try Safetensors.read(body.file, owner: body)
        let (bx, bt, bv, bvk) = (
            typed(file.tensors["inputs.x"]), typed(file.tensors["inputs.t"]), typed(file.tensors["grad_outputs"]), typed(file.tensors["batched"])
        )
        #expect(bx.isBorrowed && bt.isBorrowed && bv.isBorrowed && bvk.isBorrowed)
        let borrowed = Inputs(x: bx, t: bt)
        let owned = Inputs(x: x, t: t)
        // Within float32 rounding, not bit for bit: a kernel may split its sums by alignment.
        func same(_ a: Tensor<Float>?, _ b: Tensor<Float>?) -> Bool {
            guard let a, let b, a.shape == b.shape else { return a == nil && b == nil }
            let scale = b.scalars.reduce(Float(0)) { max($0, abs($1)) }
            return zip(a.scalars, b.scalars).allSatisfy { abs($0 - $1) <= 1e-5 * max(scale, 1) }
        }
        for threads in [1, 2] {
            try Parallel.run(threads: threads) { () throws(GradError) in
                #expect(same(try model.forward(borrowed), try model.forward(owned)))
                let all: Set<GradTarget> = [.x, .t, .params]
                for (gb, go, batched) in [(bv, v, false), (bvk, vk, true)] {
                    let rb = try model.vjp(borrowed, gradOutputs: gb, isGradsBatched: batched, wrt: all)
                    let ro = try model.vjp(owned, gradOutputs: go, isGradsBatched: batched, wrt: all)
                    #expect(same(rb.x, ro.x) && same(rb.t, ro.t) && same(rb.outputs, ro.outputs))
                    #expect(rb.params.count == ro.params.count && zip(rb.params, ro.params).allSatisfy { $0.name == $1.name && same($0.grad, $1.grad) })
                }
                let jb = try model.jvp(borrowed, tangentX: bv, tangentT: bt)
                let jo = try model.jvp(owned, tangentX: v, tangentT: t)
                #expect(same(jb.jvp, jo.jvp) && same(jb.outputs, jo.outputs))
                #expect(same(try model.jvp(borrowed, tangentX: bv, tangentT: nil).jvp, try model.jvp(owned, tangentX: v, tangentT: nil).jvp))
            }
        }
    }
}
