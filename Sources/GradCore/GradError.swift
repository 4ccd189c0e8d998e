/// One problem with a request or model, located by its path in the request (`layers[3].weight`).
public struct FieldIssue: Sendable, Equatable, CustomStringConvertible {
    /// Where the problem is, in the request's own field names (`inputs.x`, `layers[2].bias`).
    public var path: String
    /// What is wrong, with the expected and the actual value where there are such.
    public var message: String

    /// Creates an issue.
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { "\(path): \(message)" }
}

/// Errors of the autodiff core. They know nothing of HTTP; the server maps them to statuses.
public enum GradError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The model or the inputs are invalid; every problem found is listed.
    case invalid([FieldIssue])
    /// An answer would hold more elements than the configured limit allows.
    case outputTooLarge(path: String, elements: Int, limit: Int)
    /// A computation ran past its deadline and was abandoned.
    case deadlineExceeded
    /// A computation was stopped because nobody waits for it any more (client gone, shutdown).
    case cancelled
    /// A request's plan exceeds a per-request limit: `limit` names it (`--max-request-memory`),
    /// `message` gives the figure and the limit; `path` is the field that drove the figure.
    case limitExceeded(path: String, limit: String, message: String)

    /// Shorthand for a single issue.
    public static func invalid(_ path: String, _ message: String) -> GradError {
        .invalid([FieldIssue(path: path, message: message)])
    }

    public var description: String {
        switch self {
        case .invalid(let issues): issues.map(\.description).joined(separator: "; ")
        case .outputTooLarge(let path, let elements, let limit):
            "\(path): the answer would hold \(elements) numbers, above the limit of \(limit)"
        case .deadlineExceeded: "the computation ran past its deadline"
        case .cancelled: "the computation was cancelled"
        case .limitExceeded(let path, let limit, let message): "\(path): \(message) (\(limit))"
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
