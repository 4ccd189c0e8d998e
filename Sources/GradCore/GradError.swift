/// Where a problem is, in the core's own terms. The core does not know how a protocol spells
/// its fields: each front end (`/v1`, Tesseract, UM-Bridge) names a place in its own words.
public enum Place: Sendable, Hashable, CustomStringConvertible {
    /// A primal input.
    case input(InputName)
    /// The tangent of an input (a JVP's direction), or the tangents as a whole when nil.
    case tangent(InputName?)
    /// The cotangent of the outputs (a VJP's `v`).
    case cotangent
    /// The inputs a derivative is taken with respect to.
    case wrt
    /// The number of probes of a Hutchinson estimate.
    case probes
    /// A setting of an ODE solve.
    case solver(SolverSetting)
    /// The model as a whole (nil), or a place inside it in the model format's terms, which
    /// every front end shares.
    case model(ModelPlace?)
    /// A field as the front end that decoded the request named it (codec paths, options).
    case field(String)

    /// A neutral rendering for logs and tests; front ends use their own names.
    public var description: String {
        switch self {
        case .input(let i): "input \(i.rawValue)"
        case .tangent(let i?): "tangent of \(i.rawValue)"
        case .tangent(nil): "tangents"
        case .cotangent: "cotangent"
        case .wrt: "wrt"
        case .probes: "probes"
        case .solver(let s): "solver \(s)"
        case .model(nil): "model"
        case .model(let p?): "model \(p.path)"
        case .field(let f): f
        }
    }
}

/// A setting of an ODE solve (``ODEOptions``), as a place for errors.
public enum SolverSetting: Sendable, Hashable {
    /// The times the solution is asked at.
    case timeGrid
    /// A fixed-step method's step.
    case stepSize
    /// The absolute tolerance of an adaptive method.
    case atol
    /// The relative tolerance of an adaptive method.
    case rtol
    /// The bound on steps.
    case maxSteps
}

/// A primal input of a model: `x`, and `t` for time-varying models.
public enum InputName: String, Sendable, Hashable {
    case x
    case t
}

/// A place inside a model, in the model format's own terms (``OpDeclaration``).
public enum ModelPlace: Sendable, Hashable {
    /// The model's `inputs` list.
    case inputs
    /// The `layers` list.
    case layers
    /// Field `field` of layer `index` (`weight`, `bias`, an activation's parameter).
    case layer(Int, field: String)

    /// The model-format path (`layers[2].weight`), relative to the model object.
    public var path: String {
        switch self {
        case .inputs: "inputs"
        case .layers: "layers"
        case .layer(let i, let field): "layers[\(i)].\(field)"
        }
    }
}

/// One problem with a request or model: where it is and what is wrong.
public struct FieldIssue: Sendable, Equatable, CustomStringConvertible {
    /// Where the problem is.
    public var place: Place
    /// What is wrong, with the expected and the actual value where there are such.
    public var message: String

    /// Creates an issue at a typed place.
    public init(_ place: Place, _ message: String) {
        self.place = place
        self.message = message
    }

    /// Creates an issue at a field path the caller names (codecs, front ends).
    public init(path: String, message: String) {
        self.init(.field(path), message)
    }

    /// `place: message`.
    public var description: String { "\(place): \(message)" }
}

/// Errors of the autodiff core. They know nothing of HTTP; the server maps them to statuses.
public enum GradError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The model or the inputs are invalid; every problem found is listed.
    case invalid([FieldIssue])
    /// An answer would hold more elements than the configured limit allows; `place` drove the size.
    case outputTooLarge(place: Place, elements: Int, limit: Int)
    /// A computation ran past its deadline and was abandoned.
    case deadlineExceeded
    /// A computation was stopped because nobody waits for it any more (client gone, shutdown).
    case cancelled
    /// A request's plan exceeds a per-request limit: `limit` names it (`--max-request-memory`),
    /// `message` gives the figure and the limit; `place` is what drove the figure.
    case limitExceeded(place: Place, limit: String, message: String)

    /// Shorthand for a single issue at a typed place.
    public static func invalid(_ place: Place, _ message: String) -> GradError {
        .invalid([FieldIssue(place, message)])
    }

    /// Shorthand for a single issue at a field path the caller names (codecs, front ends).
    public static func invalid(_ path: String, _ message: String) -> GradError {
        .invalid([FieldIssue(path: path, message: message)])
    }

    /// The problem in one line.
    public var description: String {
        switch self {
        case .invalid(let issues): issues.map(\.description).joined(separator: "; ")
        case .outputTooLarge(let place, let elements, let limit):
            "\(place): the answer would hold \(elements) numbers, above the limit of \(limit)"
        case .deadlineExceeded: "the computation ran past its deadline"
        case .cancelled: "the computation was cancelled"
        case .limitExceeded(let place, let limit, let message): "\(place): \(message) (\(limit))"
        }
    }
}

/// Shape arithmetic that reports overflow instead of trapping.
public enum Shape {
    /// Product of `dims`, or nil on overflow or a negative extent.
    public static func elementCount(_ dims: [Int]) -> Int? {
        var n = 1
        for d in dims {
            if d < 0 { return nil }
            let (p, o) = n.multipliedReportingOverflow(by: d)
            if o { return nil }
            n = p
        }
        return n
    }

    /// Formats a shape as `[2, 3]`.
    public static func describe(_ dims: [Int]) -> String { "[" + dims.map(String.init).joined(separator: ", ") + "]" }
}
