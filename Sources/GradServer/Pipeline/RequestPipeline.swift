import GradCodec
import GradCore
import Hummingbird
import NIOCore

/// The one path of every route that computes or stores (`/v1/*` operations, `/v1/models`,
/// `/v1/benchmark`, `/tesseract/{id}/*`, `/umbridge/{id}/*`):
///
/// 1. **admit** — a full compute queue, or a memory budget without room for the declared body,
///    is answered 503 (`Retry-After`) before a byte of the body is read; a body larger than the
///    limits is 413. Only then is `100 Continue` sent.
/// 2. **read** the body under `--max-body-bytes` (the connection's guard enforces `--body-timeout`).
/// 3. **parse, plan, compute, encode** on a compute thread (or, for a small computation when
///    no other is running, on the event loop: `inline`), in the handler's closure: the plan
///    (``Job/admit(_:path:inputElements:answerBytesPerNumber:)``) checks the request's output,
///    memory and FLOPs against the per-request limits (422) and reserves its memory in the
///    process budget (503 when it has no room now) before any large allocation. The computation
///    obeys a cancellation token set at the deadline (504) and when the client goes away.
///
/// Handlers only declare their operation.
struct RequestPipeline: Sendable {
    let pool: ComputePool
    let memory: MemoryBudget
    let configuration: ServerConfiguration
    let drain: Drain
    /// What each registered model's plans took last time (``InlineHistory``).
    let history = InlineHistory()

    /// Bytes a request holds besides its body and plan (headers, bookkeeping, and the parser's
    /// fixed allowance of JSON nodes: ``JSONParser/maxNodes(forBytes:)``).
    static let baseline = 2 << 20

    /// Runs `compute` for `request` through the pipeline; `extraSeconds` extends the deadline
    /// (benchmarks run for a bounded time of their own).
    ///
    /// The request's memory reservation is then held by the connection until the answer has left
    /// its buffer (``ConnectionGuard``), so answers that clients are slow to read still count
    /// against the budget; a job answered 504 holds it until it has stopped.
    func run<T: Sendable>(
        _ request: Request, _ context: GradRequestContext, extraSeconds: Double = 0, _ compute: @escaping @Sendable (Job) throws -> T
    ) async throws -> T {
        try await run(request, context, extraSeconds: extraSeconds) { job, session in
            defer { session.end() }  // one job: the place goes back when it ends
            return try compute(job)
        }
    }

    /// ``run(_:_:extraSeconds:_:)`` for answers that need more jobs after the first (a streamed
    /// Jacobian): `compute` also gets the ``ComputeSession`` that holds the request's place in the
    /// pool, and ends it when done with it (at once, or when its stream ends); a session no one ends
    /// ends when it is dropped.
    ///
    /// With `inline`, a small body that arrives while no other computation runs is computed here,
    /// on the connection's event loop (``ComputePool/admitAlone()``), as long as `compute` finds it
    /// small: ``Job/admit(_:path:answerElements:extraBytes:inputElements:answerBytesPerNumber:)``
    /// hands over to a compute thread (``Job/Handoff``) a plan whose answer is not binary, whose
    /// static estimate is above ``ServerConfiguration/inlineWorkLimit``, or which the same model
    /// did not compute within ``ServerConfiguration/inlineMilliseconds`` last time (``InlineHistory``);
    /// `compute` then starts again from the body (parsing it again costs microseconds: only small
    /// bodies are tried inline).
    func run<T: Sendable>(
        _ request: Request, _ context: GradRequestContext, extraSeconds: Double = 0, inline: Bool = false,
        _ compute: @escaping @Sendable (Job, ComputeSession) throws -> T
    ) async throws -> T {
        let arrival = ContinuousClock.now
        let deadline = configuration.deadline(from: arrival, extra: extraSeconds)
        // 1. Admission, before reading.
        if drain.isDraining { throw drain.refusal }
        guard pool.hasRoom else { throw pool.busy() }
        let contentType = request.headers[.contentType]
        let factor = Job.bodyFactor(contentType: contentType)
        let maxBody = configuration.maxBodyBytes
        let declared = try BodyReader.declaredLength(request, limit: maxBody)
        // Released when its last holder (this call, the job, the answer) lets go of it.
        let reservation = memory.reservation()
        if let declared { try reserve(reservation, body: Count(declared), factor: factor) }
        // 2. The body.
        context.channel?.triggerUserOutboundEvent(ConnectionGuard.ConnectionEvent.sendContinue, promise: nil)
        let body = try await BodyReader.collect(request, limit: maxBody) { total in
            if declared == nil { try reserve(reservation, body: Count(total), factor: factor) }
        }
        // 3. Compute.
        let alone = inline && Job.mayTryInline(body, contentType: contentType) ? pool.admitAlone() : nil
        let ticket = try alone ?? pool.admit()
        let token = Cancellation()
        context.channel?.triggerUserOutboundEvent(ConnectionGuard.ConnectionEvent.bind(token), promise: nil)
        let job = Job(
            body: body, contentType: contentType, configuration: configuration, reservation: reservation, budget: memory,
            bodyReservation: Count(body.readableBytes) * factor + Self.baseline, history: history)
        job.readSeconds = Stopwatch.seconds(ContinuousClock.now - arrival)
        let session = ComputeSession(pool: pool, ticket: ticket, token: token, deadline: deadline)
        let value: T
        do {
            if alone != nil, let inlined = try computeInline(job, session, compute) {
                value = inlined
            } else {
                value = try await pool.run(ticket, deadline: deadline, token: token) { queue in
                    job.queueSeconds = queue
                    return try job.timed { try compute(job, session) }
                }
            }
        } catch {
            session.end()
            throw error
        }
        // The answer keeps the memory until the connection has written it (or closed): for a
        // streamed answer, until its last block has been written.
        context.channel?.triggerUserOutboundEvent(ConnectionGuard.ConnectionEvent.hold(reservation), promise: nil)
        return value
    }

    /// Runs `compute` on this thread under the session's deadline and token; nil when it handed
    /// its plan over to a compute thread (``Job/Handoff``).
    private func computeInline<T>(_ job: Job, _ session: ComputeSession, _ compute: (Job, ComputeSession) throws -> T) throws -> T? {
        job.isInline = true
        defer { job.isInline = false }
        return try session.pool.runInline(session.ticket, deadline: session.deadline, token: session.token) { () -> T? in
            do { return try job.timed { try compute(job, session) } } catch is Job.Handoff { return nil }
        }
    }

    /// Reserves room for a body of `body` bytes (and what parsing it may allocate).
    private func reserve(_ reservation: MemoryBudget.Reservation, body: Count, factor: Int) throws {
        let need = body * factor + Self.baseline
        if need.value > configuration.maxRequestMemory {
            throw Problem(
                .contentTooLarge, title: "Body too large",
                detail:
                    "a \(body) byte body may take up to \(need.bytesDescription) once parsed, above the per-request limit of \(Count(configuration.maxRequestMemory).bytesDescription) (--max-request-memory); send tensors as base64 or safetensors, or split the batch"
            )
        }
        guard reservation.grow(to: need) else { throw memory.busy(need: need) }
    }
}

/// One admitted request on its compute thread: its body, and the plan check.
final class Job: @unchecked Sendable {
    let body: ByteBuffer
    let contentType: String?
    let configuration: ServerConfiguration
    private let reservation: MemoryBudget.Reservation
    private let budget: MemoryBudget
    private let bodyReservation: Count
    /// Where the job's plan and its time are remembered (the pipeline's).
    private let history: InlineHistory
    /// Whether the body is safetensors.
    private let safetensorsBody: Bool
    /// Seconds the job waited for a compute thread (set before it runs; read on the same thread).
    var queueSeconds = 0.0
    /// Seconds from the request's arrival at the pipeline until its whole body was read.
    var readSeconds = 0.0
    /// Whether the job runs on an event loop (``RequestPipeline``'s `inline`): its plan must then
    /// be within ``ServerConfiguration/inlineWork`` (with 10 a number for copying its binary answer)
    /// and have taken at most ``ServerConfiguration/inlineMilliseconds`` last time.
    var isInline = false
    /// The registered model the front end computes with, when its plans are worth remembering
    /// (set before ``admit(_:path:answerElements:extraBytes:inputElements:answerBytesPerNumber:)``).
    var modelReference: String?
    /// The admitted plan, as ``InlineHistory`` remembers it: a registered model's, with a binary answer.
    private(set) var historyKey: InlineHistory.Key?

    /// Thrown on an event loop by ``admit(_:path:answerElements:extraBytes:inputElements:answerBytesPerNumber:)``
    /// (before it reserves anything), and by a front end before it decodes a model sent in the
    /// request: the computation is not small enough to run there, and starts again on a compute thread.
    struct Handoff: Error {}

    /// Whether a body may be tried on the event loop: parsing it there must stay in the tens of
    /// microseconds. A JSON body is parsed whole, so at most 64 KiB; a safetensors body's tensors
    /// are borrowed and checked at memory speed (at most 4 MiB), and its JSON header, which holds
    /// the request, is at most 64 KiB too.
    static func mayTryInline(_ body: ByteBuffer, contentType: String?) -> Bool {
        guard RequestDocument.isSafetensors(contentType) else { return body.readableBytes <= 64 << 10 }
        guard body.readableBytes <= 4 << 20, let n = body.getInteger(at: body.readerIndex, endianness: .little, as: UInt64.self) else { return false }
        return n <= 64 << 10
    }

    init(
        body: ByteBuffer, contentType: String?, configuration: ServerConfiguration, reservation: MemoryBudget.Reservation, budget: MemoryBudget,
        bodyReservation: Count, history: InlineHistory
    ) {
        self.body = body
        self.contentType = contentType
        self.configuration = configuration
        self.reservation = reservation
        self.budget = budget
        self.bodyReservation = bodyReservation
        self.history = history
        safetensorsBody = RequestDocument.isSafetensors(contentType)
    }

    /// Runs `body` and records how long it took, when the job has a plan to remember. An inline
    /// run slower than the limit sends the plan's next request to a compute thread (which records
    /// it again), and one slower than four times the limit bans its model from inline runs for
    /// 30 s: its values made it slower than measured (``InlineHistory``). A host's hiccup of a few
    /// milliseconds does neither for long.
    func timed<T>(_ body: () throws -> T) rethrows -> T {
        let start = ContinuousClock.now
        let value = try body()
        guard let key = historyKey else { return value }
        let seconds = Stopwatch.seconds(ContinuousClock.now - start)
        history.record(key, seconds: seconds)
        if isInline, seconds > 4 * configuration.inlineMilliseconds / 1000 { history.ban(model: key.model, for: .seconds(30)) }
        return value
    }

    /// How many bytes a body may hold once parsed and its model built, per byte: a JSON number
    /// takes at least 2 bytes (`0,`) and becomes an 8-byte double (5× with the body itself), and
    /// an inline weight is cast once more into the model's dtype (up to 2× more); a safetensors
    /// body is copied into its tensors and float32 weights may be widened to float64 (4×).
    static func bodyFactor(contentType: String?) -> Int {
        RequestDocument.isSafetensors(contentType) ? 4 : 7
    }

    /// The parsed request document (JSON, or safetensors with its JSON part).
    func document() throws -> RequestDocument { try RequestDocument.parse(body, contentType: contentType) }

    /// Checks `plan` against the per-request limits and reserves its memory in the process
    /// budget, before anything large is allocated.
    ///
    /// - Parameters:
    ///   - path: the field that drives the size, in the front end's own terms (named in a 422).
    ///   - answerElements: the numbers the answer holds when the front end writes something else
    ///     than the core's result (Tesseract's block-diagonal Jacobian); `extraBytes` what that takes.
    ///   - inputElements: request tensors still to be decoded or cast into the model's dtype.
    ///   - answerBytesPerNumber: the encoding's bytes per number (JSON text ~25, base64 ~11, binary 4 or 8).
    /// - Throws: 422 (``GradError/outputTooLarge(place:elements:limit:)``,
    ///   ``GradError/limitExceeded(place:limit:message:)``) or 503 when the budget has no room now.
    func admit(
        _ plan: ResourcePlan, path: String, answerElements: Count? = nil, extraBytes: Count = .zero, inputElements: Count = .zero,
        answerBytesPerNumber: Int = 25
    ) throws {
        let c = configuration
        let outputs = answerElements ?? plan.outputElements
        if outputs.value > c.maxOutputElements {
            throw GradError.outputTooLarge(place: .field(path), elements: outputs.value, limit: c.maxOutputElements)
        }
        let gflop = plan.flops.double / 1e9
        if gflop > c.maxRequestGFLOP {
            throw GradError.limitExceeded(
                place: .field(path), limit: "--max-request-gflop",
                message:
                    "the computation needs \(Self.figure(gflop)) GFLOP, above this server's limit of \(Self.figure(c.maxRequestGFLOP)) GFLOP per request; split the batch"
            )
        }
        // Written answers are built once and copied once into the response.
        let answer = outputs * answerBytesPerNumber * 2
        let working = plan.peakBytes + extraBytes + inputElements * 16 + answer
        let peak = working + Count(body.readableBytes)
        if peak.value > c.maxRequestMemory {
            throw GradError.limitExceeded(
                place: .field(path), limit: "--max-request-memory",
                message:
                    "the computation would hold about \(peak.bytesDescription) at its peak (body, tensors, intermediates such as hidden layers of width \(Self.figure(Double(plan.widest))) and the answer), above this server's limit of \(Count(c.maxRequestMemory).bytesDescription) per request; split the batch"
            )
        }
        // Binary answers (4 or 8 bytes a number: their encoding is a copy at most) of a registered
        // model are remembered; on an event loop, only a plan within the static bound that took
        // less than the limit last time goes on.
        let binary = answerBytesPerNumber == 4 || answerBytesPerNumber == 8
        historyKey = nil
        if binary, let modelReference, c.computesInline {
            historyKey = InlineHistory.Key(
                model: modelReference, path: path, outputs: outputs.value, flops: plan.flops.value, work: plan.work.value,
                peakBytes: plan.peakBytes.value, inputElements: inputElements.value, answerBytesPerNumber: answerBytesPerNumber,
                binaryBodyBytes: safetensorsBody ? body.readableBytes : 0)
        }
        if isInline {
            guard let key = historyKey, (plan.work + outputs * 10).double <= c.inlineWork, let last = history.lastSeconds(key),
                last <= c.inlineMilliseconds / 1000
            else { throw Handoff() }
        }
        let total = bodyReservation + working
        guard reservation.grow(to: total) else { throw budget.busy(need: total) }
    }

    private static func figure(_ v: Double) -> String {
        if !v.isFinite { return "more than 10^18" }
        if v >= 100 { return "\(Int(v.rounded()))" }
        return "\((v * 100).rounded() / 100)"
    }
}

/// Reads a request body within the size limit: a declared length above it is refused at once
/// (before anything is reserved or read), a chunked body as soon as it passes the limit. The
/// buffer is sized from `Content-Length`, so a megabyte body is not copied again each time the
/// buffer grows.
enum BodyReader {
    /// The declared `Content-Length`, or nil for a chunked body; 413 above `limit`.
    static func declaredLength(_ request: Request, limit: Int) throws -> Int? {
        let declared = request.headers[.contentLength].flatMap { Int($0) }
        if let declared, declared > limit {
            throw Problem(.contentTooLarge, title: "Body too large", detail: "the body declares \(declared) bytes; the limit is \(limit) (--max-body-bytes)")
        }
        return declared
    }

    /// The whole body (its declared length was checked by ``declaredLength(_:limit:)``);
    /// `onGrow` sees the running total.
    ///
    /// A body that arrives in one fragment (common for a megabyte once the connection reads up to
    /// ``ReadSize/maximum`` at a time) and fills most of its read buffer is kept as it is, not copied.
    static func collect(_ request: Request, limit: Int, onGrow: (Int) throws -> Void = { _ in }) async throws -> ByteBuffer {
        let declared = request.headers[.contentLength].flatMap { Int($0) }
        var only: ByteBuffer? = nil
        var buffer: ByteBuffer? = nil
        var total = 0
        do {
            for try await fragment in request.body {
                total += fragment.readableBytes
                if total > limit {
                    throw Problem(.contentTooLarge, title: "Body too large", detail: "the body is larger than the limit of \(limit) bytes (--max-body-bytes)")
                }
                try onGrow(total)
                // Kept only when it is most of the buffer it lives in: a small body must not pin a
                // connection's megabyte read buffer for the length of its computation.
                if buffer == nil, only == nil, fragment.readableBytes == declared, fragment.storageCapacity <= 2 * fragment.readableBytes {
                    only = fragment
                    continue
                }
                if buffer == nil {
                    buffer = ByteBufferAllocator().buffer(capacity: min(declared ?? 16_384, limit))
                    if let first = only.take() { buffer!.writeImmutableBuffer(first) }
                }
                buffer!.writeImmutableBuffer(fragment)
            }
        } catch let problem as Problem {
            throw problem
        } catch {
            // The body's framing is broken (a bad chunk size, a body shorter than its
            // Content-Length, the client gone mid-upload): the client's fault, never a 500.
            throw Problem(
                .badRequest, title: "Malformed body", detail: "the request body could not be read after \(total) bytes: \(error)",
                headers: [.connection: "close"])
        }
        return buffer ?? only ?? ByteBuffer()
    }
}
