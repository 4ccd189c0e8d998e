import GradCodec
import GradCore
import NIOCore
import Testing

@testable import GradServer

/// Safetensors answers computed into their body buffer: the same bytes as the copying encoder,
/// sent from the memory the tensors were computed in; anything else falls back to the copy.
@Suite("Answer arena")
struct AnswerArenaTests {
    let model = ToyMLP.make(d: 6, width: 5, hidden: 1, seed: 2, as: Float.self)
    let inputs: Inputs<Float> = ToyMLP.inputs(batch: 3, d: 6)

    /// The body with the arena, and the body the copying encoder writes for the same fields.
    func bodies(_ answer: Answer) -> (ByteBuffer, ByteBuffer) {
        var plain = answer
        plain.arena = nil
        let trailer = { () -> Answer in
            var t = Answer()
            t.add("timing", "compute_ms", number: 1.5)
            return t
        }
        return (answer.encode(.safetensors, trailer: trailer).body, plain.encode(.safetensors, trailer: trailer).body)
    }

    /// Whether `t`'s elements lie inside `body`'s readable bytes.
    func inside(_ t: Tensor<Float>, _ body: ByteBuffer) -> Bool {
        body.withUnsafeReadableBytes { b in
            t.withUnsafeBytes { e in e.baseAddress! >= b.baseAddress! && e.baseAddress! + e.count <= b.baseAddress! + b.count }
        }
    }

    @Test("a forward's outputs are sent from where they were computed")
    func forward() throws {
        let arena = try #require(AnswerArena.make(bytes: 3 * 6 * 4))
        let y = try ResultArena.run(arena.results) { () throws(GradError) in try model.forward(inputs) }
        #expect(y.isBorrowed)
        #expect(y == (try model.forward(inputs)))
        var answer = Answer()
        answer.arena = arena
        answer.add("outputs", tensor: .float32(y))
        let (body, copy) = bodies(answer)
        #expect(body == copy)
        #expect(inside(y, body))
        let file = try body.withUnsafeReadableBytes { try Safetensors.read($0) }
        #expect(file.tensors["outputs"] == .float32(y) && file.metadata["timing"] != nil)
    }

    @Test("a VJP's outputs, x̄ and t̄ (K-batched too) are sent from where they were computed")
    func vjp() throws {
        for k in [1, 2] {
            let v = Tensor<Float>(shape: k == 1 ? [3, 6] : [k, 3, 6], scalars: (0..<(k * 18)).map { Float($0 % 7) - 3 })
            let arena = try #require(AnswerArena.make(bytes: (3 * 6 + k * 3 * 6 + k * 3) * 4))
            let r = try ResultArena.run(arena.results) { () throws(GradError) in
                try model.vjp(inputs, gradOutputs: v, isGradsBatched: k > 1, wrt: [.x, .t])
            }
            let plain = try model.vjp(inputs, gradOutputs: v, isGradsBatched: k > 1, wrt: [.x, .t])
            #expect(r.outputs!.isBorrowed && r.x!.isBorrowed && r.t!.isBorrowed)
            #expect(r.outputs == plain.outputs && r.x == plain.x && r.t == plain.t)
            var answer = Answer()
            answer.arena = arena
            answer.add("outputs", tensor: r.outputs.map(AnyTensor.init))
            answer.add("grads", "x", tensor: r.x.map(AnyTensor.init))
            answer.add("grads", "t", tensor: r.t.map(AnyTensor.init))
            let (body, copy) = bodies(answer)
            #expect(body == copy)
            #expect(inside(r.outputs!, body) && inside(r.x!, body) && inside(r.t!, body))
        }
    }

    @Test("a reverse-mode Jacobian's outputs and J (of x, of t, or both) are sent from where they were computed")
    func jacobian() throws {
        let (b, d) = (3, 6)
        for wrt: Set<GradTarget> in [[.x], [.t], [.x, .t]] {
            let elements = b * d + (wrt.contains(.x) ? b * d * d : 0) + (wrt.contains(.t) ? b * d : 0)
            let arena = try #require(AnswerArena.make(bytes: elements * 4))
            let r = try ResultArena.run(arena.results) { () throws(GradError) in try model.jacobian(inputs, wrt: wrt, mode: .reverse) }
            let plain = try model.jacobian(inputs, wrt: wrt, mode: .reverse)
            #expect(r.outputs == plain.outputs && r.x == plain.x && r.t == plain.t)
            var answer = Answer()
            answer.arena = arena
            answer.add("outputs", tensor: .float32(r.outputs))
            answer.add("jacobian", "x", tensor: r.x.map(AnyTensor.init))
            answer.add("jacobian", "t", tensor: r.t.map(AnyTensor.init))
            answer.add("mode", string: r.mode.rawValue)
            let (body, copy) = bodies(answer)
            #expect(body == copy)
            #expect(inside(r.outputs, body) && r.x.map { inside($0, body) } ?? true && r.t.map { inside($0, body) } ?? true, "\(wrt)")
        }
        // Forward mode builds J in its own order: copied.
        let arena = try #require(AnswerArena.make(bytes: (b * d + b * d * d) * 4))
        let f = try ResultArena.run(arena.results) { () throws(GradError) in try model.jacobian(inputs, wrt: [.x], mode: .forward) }
        var answer = Answer()
        answer.arena = arena
        answer.add("outputs", tensor: .float32(f.outputs))
        answer.add("jacobian", "x", tensor: f.x.map(AnyTensor.init))
        let (body, copy) = bodies(answer)
        #expect(body == copy && !inside(f.x!, body))
    }

    @Test("a parsed safetensors body's tensors borrow it, and keep their values whatever is done to the buffer after")
    func parsedBodyBorrows() throws {
        let x = Tensor<Float>(shape: [3, 6], scalars: (0..<18).map { Float($0) / 4 - 2 })
        var buffer = ByteBuffer(bytes: Safetensors.write([("inputs.x", .float32(x))], metadata: [("request", "{}")]))
        let doc = try RequestDocument.parse(buffer, contentType: "application/octet-stream")
        guard case .float32(let got)? = doc.binary["inputs.x"] else {
            Issue.record("no float32 inputs.x")
            return
        }
        #expect(got.isBorrowed && got == x)
        // Writes to the buffer copy its storage first (the tensor holds it); a new buffer is another storage.
        buffer.setBytes([UInt8](repeating: 0xFF, count: buffer.readableBytes), at: buffer.readerIndex)
        buffer.clear()
        buffer.writeBytes([UInt8](repeating: 0x7F, count: 4096))
        buffer.discardReadBytes()
        buffer = ByteBuffer()
        #expect(got == x && got.isBorrowed)
    }

    @Test("other answers are copied: a tensor of their own, a different order, an arena too small, row chunks")
    func fallbacks() throws {
        let v = Tensor<Float>(shape: [3, 6], scalars: (0..<18).map { Float($0) / 9 })
        // Parameter gradients are arrays: the body is copied whole.
        let arena = try #require(AnswerArena.make(bytes: (18 + 18 + 3) * 4))
        let r = try ResultArena.run(arena.results) { () throws(GradError) in try model.vjp(inputs, gradOutputs: v, wrt: [.x, .t, .params]) }
        var answer = Answer()
        answer.arena = arena
        answer.add("outputs", tensor: r.outputs.map(AnyTensor.init))
        answer.add("grads", "x", tensor: r.x.map(AnyTensor.init))
        answer.add("grads", "t", tensor: r.t.map(AnyTensor.init))
        for (name, g) in r.params { answer.add("grads", "params", name, tensor: .float32(g)) }
        var (body, copy) = bodies(answer)
        #expect(body == copy && !inside(r.x!, body))
        // The arena's tensors in another order.
        var swapped = Answer()
        swapped.arena = arena
        swapped.add("grads", "x", tensor: r.x.map(AnyTensor.init))
        swapped.add("outputs", tensor: r.outputs.map(AnyTensor.init))
        swapped.add("grads", "t", tensor: r.t.map(AnyTensor.init))
        (body, copy) = bodies(swapped)
        #expect(body == copy && !inside(r.x!, body))
        // Too small: the outputs fit, x̄ does not and is an array.
        let small = try #require(AnswerArena.make(bytes: 18 * 4 + 4))
        let s = try ResultArena.run(small.results) { () throws(GradError) in try model.vjp(inputs, gradOutputs: v, wrt: [.x]) }
        #expect(s.outputs!.isBorrowed && !s.x!.isBorrowed)
        // Row chunks computed at once never take from the arena.
        let chunked = try #require(AnswerArena.make(bytes: 18 * 4))
        let y = try Parallel.run(threads: 2) { () throws(GradError) in
            try ResultArena.run(chunked.results) { () throws(GradError) in try model.forward(inputs) }
        }
        #expect(!y.isBorrowed && chunked.results.used == 0)
    }
}
