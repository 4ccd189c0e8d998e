import GradCodec
import GradCore
import NIOCore

/// A Jacobian answer written as it is computed: a safetensors body whose header (every shape is
/// known from the request) leaves first, then `jacobian.x` one block of samples at a time, each
/// block computed on the request's place in the compute pool while the previous one is written,
/// then the small tensors collected along the way (`outputs`, `jacobian.t`). The server never holds
/// the whole answer, nor its encoding: at most the block being computed and the blocks the
/// connection has not sent yet (HTTP backpressure: a block is computed only once the previous one
/// is handed to the connection).
///
/// Taken for safetensors answers of `/v1/jacobian` with `x` among `wrt` that span more than two
/// blocks (``blockBytes``); smaller answers are built whole as before. The body's length is known
/// up front (`Content-Length`). What is known before the first byte (the `timing` of the header,
/// the `Server-Timing` header) covers the work up to the first block: reading, decoding, the plan
/// and that block's computation. An error after the first byte (the deadline, the client gone)
/// can only cut the body short; the plan is checked in full before it.
final class JacobianStream: @unchecked Sendable {
    /// Answer bytes per block (whole samples; at least one).
    static let blockBytes = 4 << 20

    let model: AnyModel
    let args: AnyModel.Arguments
    let wrt: Set<GradTarget>
    let mode: JacobianMode
    let returnOutputs: Bool
    let batch: Int
    let d: Int
    let dOut: Int
    let rowsPerBlock: Int
    /// The rows computed so far, and what they gave besides `jacobian.x` (written last). Touched by
    /// one block's job at a time, in order.
    private(set) var done = 0
    private var outputs: [AnyTensor] = []
    private var jacobianT: [AnyTensor] = []

    /// Whether a Jacobian of `batch` rows goes out streamed.
    static func applies(encoding: OutputEncoding, wrt: Set<GradTarget>, batch: Int, d: Int, dOut: Int, dtype: DType) -> Bool {
        guard encoding == .safetensors, wrt.contains(.x) else { return false }
        let perRow = Count(dOut) * d * dtype.byteCount
        return (Count(batch) * perRow).value > 2 * blockBytes
    }

    static func rowsPerBlock(d: Int, dOut: Int, dtype: DType) -> Int {
        max(1, blockBytes / max(1, dOut * d * dtype.byteCount))
    }

    init(model: AnyModel, args: AnyModel.Arguments, wrt: Set<GradTarget>, mode: JacobianMode, returnOutputs: Bool, d: Int, dOut: Int) {
        self.model = model
        self.args = args
        self.wrt = wrt
        self.mode = mode
        self.returnOutputs = returnOutputs
        self.batch = args.x.shape[0]
        self.d = d
        self.dOut = dOut
        self.rowsPerBlock = Self.rowsPerBlock(d: d, dOut: dOut, dtype: model.dtype)
    }

    var finished: Bool { done >= batch }

    /// The tensors in the order of the body: `jacobian.x` first (streamed), then the small ones.
    private var entries: [(name: String, dtype: DType, shape: [Int])] {
        var e: [(name: String, dtype: DType, shape: [Int])] = [("jacobian.x", model.dtype, [batch, dOut, d])]
        if returnOutputs { e.append(("outputs", model.dtype, [batch, dOut])) }
        if wrt.contains(.t) { e.append(("jacobian.t", model.dtype, [batch, dOut])) }
        return e
    }

    /// The body's length: the header and every tensor.
    func contentLength(metadata: [(String, String)]) -> Int {
        Safetensors.header(entries: entries, metadata: metadata).count + entries.reduce(0) { $0 + Shape.elementCount($1.shape)! * $1.dtype.byteCount }
    }

    /// The body up to the data section.
    func header(metadata: [(String, String)]) -> ByteBuffer { ByteBuffer(bytes: Safetensors.header(entries: entries, metadata: metadata)) }

    /// Computes the next block of samples and returns its `jacobian.x` bytes (on a compute thread).
    func nextBlock() throws -> ByteBuffer {
        let rows = done..<min(batch, done + rowsPerBlock)
        let part = AnyModel.Arguments(x: args.x.rows(rows), t: args.t?.rows(rows))
        let r = try model.jacobian(part, wrt: wrt, mode: mode)
        outputs.append(r.outputs)
        if let t = r.t { jacobianT.append(t) }
        done = rows.upperBound
        var buffer = ByteBufferAllocator().buffer(capacity: r.x!.byteCount)
        buffer.writeTensor(r.x!)
        return buffer
    }

    /// The small tensors after the last block.
    func tail() -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: 2 * batch * dOut * model.dtype.byteCount)
        if returnOutputs { for o in outputs { buffer.writeTensor(o) } }
        for t in jacobianT { buffer.writeTensor(t) }
        return buffer
    }
}
