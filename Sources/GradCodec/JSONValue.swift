/// A parsed JSON document. Arrays of numbers (nested, rectangular) are kept as one flat
/// `Double` buffer with a shape, so a tensor of 10⁶ numbers is one allocation, not 10⁶ values.
public indirect enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    /// A rectangular array of numbers, any rank ≥ 1 (`[]` has shape `[0]`).
    case numbers(shape: [Int], values: [Double])
    /// Any other array (mixed, ragged, or holding strings or objects).
    case array([JSONValue])
    case object(JSONObject)

    /// A short name of the value's JSON type, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .numbers, .array: "an array"
        case .object: "an object"
        }
    }
}

/// A JSON object with its keys in document order (order carries no meaning; duplicates are refused).
public struct JSONObject: Sendable, Equatable {
    /// Key-value pairs in document order.
    public var entries: [(key: String, value: JSONValue)]

    /// Creates an object.
    public init(_ entries: [(key: String, value: JSONValue)] = []) { self.entries = entries }

    /// The value of `key`, or nil.
    public subscript(key: String) -> JSONValue? {
        for e in entries where e.key == key { return e.value }
        return nil
    }

    /// The keys in document order.
    public var keys: [String] { entries.map(\.key) }

    /// Equal entries in the same order.
    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.entries.count == b.entries.count && zip(a.entries, b.entries).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
}
