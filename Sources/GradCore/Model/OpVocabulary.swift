/// The model format's vocabulary: every `op` a layer may name, declared once.
///
/// An ``OpDeclaration`` states an op's name, its fields (kind, default, constraint), its
/// formula and its PyTorch counterpart, and, for activations, how to build its elementwise
/// kernel (value and derivative). The model decoder, the canonical encoder, validation, the
/// OpenAPI schema's layer types and the documentation's op table are all derived from
/// ``OpDeclaration/all``; an op that is not declared there cannot be decoded. The
/// declarations themselves live beside their rules: `linear` in `Linear.swift`, every
/// activation in `Activations.swift` (adding an activation touches that file and its tests).
public struct OpDeclaration: Sendable {
    /// The `op` string of the model format.
    public let name: String
    /// The formula, as the documentation shows it.
    public let formula: String
    /// The PyTorch module it matches (formulas, defaults and derivatives at kinks).
    public let pytorch: String
    /// The fields a layer of this op takes besides `op`, in canonical order.
    public let fields: [OpField]
    /// Builds the elementwise kernel from decoded arguments; nil for `linear`.
    let kernel: (@Sendable (OpArguments) -> ActivationKernel)?

    /// Declares `linear`-like ops whose fields are parameters (no kernel).
    init(parametric name: String, formula: String, pytorch: String, fields: [OpField]) {
        self.name = name
        self.formula = formula
        self.pytorch = pytorch
        self.fields = fields
        self.kernel = nil
    }

    /// Declares an elementwise activation.
    init(
        activation name: String, formula: String, pytorch: String, fields: [OpField] = [],
        kernel: @escaping @Sendable (OpArguments) -> ActivationKernel
    ) {
        self.name = name
        self.formula = formula
        self.pytorch = pytorch
        self.fields = fields
        self.kernel = kernel
    }

    /// Whether this op is an elementwise activation (everything but `linear`).
    public var isActivation: Bool { kernel != nil }

    /// The declaration of `name`, or nil for an op the model format does not have.
    public static func named(_ name: String) -> OpDeclaration? { byName[name] }

    /// Every op name, in documentation order.
    public static var names: [String] { all.map(\.name) }

    private static let byName: [String: OpDeclaration] = Dictionary(uniqueKeysWithValues: all.map { ($0.name, $0) })

    /// Checks `given` (field name → value, as the request wrote them) against the declared
    /// fields and fills in defaults. Parameter fields are not values and are skipped here.
    ///
    /// - Returns: the arguments, or the problems by field name (unknown field, wrong kind,
    ///   non-finite number, a value the field excludes, a choice not offered).
    public func resolve(_ given: [String: OpValue]) -> Result<OpArguments, OpFieldProblems> {
        var problems: [(field: String, message: String)] = []
        let known = Set(fields.map(\.name))
        for key in given.keys.sorted() where !known.contains(key) {
            let takes = fields.isEmpty ? "it takes no parameters" : "it takes \(fields.map(\.name).sorted().joined(separator: ", "))"
            problems.append((key, "unknown field for op \"\(name)\" (\(takes))"))
        }
        var values: [String: OpValue] = [:]
        for field in fields {
            switch (field.kind, given[field.name]) {
            case (.parameter, _): continue
            case (.number(let d), nil): values[field.name] = .number(d)
            case (.choice(_, let d), nil): values[field.name] = .choice(d)
            case (.number, .number(let x)?):
                if !x.isFinite {
                    problems.append((field.name, "expected a finite number, got \(x)"))
                } else if let excluded = field.excluded, x == excluded {
                    problems.append((field.name, "must not be \(OpField.format(excluded))"))
                } else {
                    values[field.name] = .number(x)
                }
            case (.choice(let options, _), .choice(let s)?) where options.contains(s): values[field.name] = .choice(s)
            case (.number, .choice?): problems.append((field.name, "expected a finite number, got a string"))
            case (.number, .other(let kind)?): problems.append((field.name, "expected a finite number, got \(kind)"))
            case (.choice(let options, _), _?): problems.append((field.name, "expected " + options.map { "\"\($0)\"" }.joined(separator: " or ")))
            }
        }
        if !problems.isEmpty { return .failure(OpFieldProblems(list: problems)) }
        return .success(OpArguments(values: values))
    }

    /// The activation this declaration makes from `arguments` (from ``resolve(_:)``).
    public func activation(_ arguments: OpArguments) -> Activation {
        guard let kernel else { preconditionFailure("\(name) is not an activation") }
        return Activation(declaration: self, arguments: arguments, kernel: kernel(arguments))
    }
}

/// The problems ``OpDeclaration/resolve(_:)`` found, by field name.
public struct OpFieldProblems: Error, Sendable {
    /// `(field, message)` pairs in field order.
    public let list: [(field: String, message: String)]
}

/// One field of an op besides `op`.
public struct OpField: Sendable {
    /// What the field holds.
    public enum Kind: Sendable {
        /// A finite number with a default.
        case number(default: Double)
        /// One of a few strings, with a default.
        case choice([String], default: String)
        /// A tensor (or the name of a `weights` entry); required or optional.
        case parameter(required: Bool)
    }

    /// The field's name in a layer object.
    public let name: String
    /// Its kind and default.
    public let kind: Kind
    /// A number the field must not take (softplus' `beta` ≠ 0), for numbers only.
    public let excluded: Double?
    /// One line for the documentation.
    public let summary: String

    /// A number field.
    static func number(_ name: String, default value: Double, excluding excluded: Double? = nil, _ summary: String) -> OpField {
        OpField(name: name, kind: .number(default: value), excluded: excluded, summary: summary)
    }

    /// A choice field.
    static func choice(_ name: String, _ options: [String], default value: String, _ summary: String) -> OpField {
        OpField(name: name, kind: .choice(options, default: value), excluded: nil, summary: summary)
    }

    /// A parameter field (a tensor or a `weights` name).
    static func parameter(_ name: String, required: Bool, _ summary: String) -> OpField {
        OpField(name: name, kind: .parameter(required: required), excluded: nil, summary: summary)
    }

    /// A number as the documentation and error messages write it (`1` rather than `1.0`).
    public static func format(_ x: Double) -> String {
        x == x.rounded() && abs(x) < 1e15 ? String(Int(x)) : String(x)
    }
}

/// A field value as a layer object gives it.
public enum OpValue: Sendable, Hashable {
    /// A number.
    case number(Double)
    /// A string (the value of a choice field).
    case choice(String)
    /// A value of another kind (an array, an object, a boolean, null), named for messages.
    case other(kind: String)
}

/// An op's field values after defaults are applied.
public struct OpArguments: Sendable, Hashable {
    /// Field name → value, for every number and choice field of the op.
    public let values: [String: OpValue]

    /// The number field `name` (declared, so always present after ``OpDeclaration/resolve(_:)``).
    public func number(_ name: String) -> Double {
        guard case .number(let x)? = values[name] else { preconditionFailure("\(name) is not a resolved number field") }
        return x
    }

    /// The choice field `name`.
    public func choice(_ name: String) -> String {
        guard case .choice(let s)? = values[name] else { preconditionFailure("\(name) is not a resolved choice field") }
        return s
    }
}

/// An elementwise activation `y = σ(z)` of the model format: its declaration, its arguments,
/// and the kernel that computes values and derivatives.
public struct Activation: Sendable, Equatable {
    /// The op it was declared as.
    public let declaration: OpDeclaration
    /// Its field values (defaults applied).
    public let arguments: OpArguments
    let kernel: ActivationKernel

    /// The `op` name in the model format.
    public var op: String { declaration.name }

    /// Whether it is the identity, which the transforms skip entirely.
    public var isIdentity: Bool { kernel.isIdentity }

    /// What one evaluation (value and derivative) costs in ``ResourcePlan/work``'s FLOP-equivalents.
    func evaluationCost<S: BLASScalar>(_: S.Type) -> Int { S.self == Float.self ? kernel.cost32 : kernel.cost64 }

    /// The activation `op` with the given field values (defaults for the rest), for code that
    /// builds models directly; nil when `op` is not an activation or a value is refused.
    public static func named(_ op: String, _ given: [String: OpValue] = [:]) -> Activation? {
        guard let declaration = OpDeclaration.named(op), declaration.isActivation,
            case .success(let arguments) = declaration.resolve(given)
        else { return nil }
        return declaration.activation(arguments)
    }

    /// Same op, same field values.
    public static func == (a: Activation, b: Activation) -> Bool { a.op == b.op && a.arguments == b.arguments }

    /// Computes `y = σ(z)` for `count` elements, and `d = σ'(z)` when `d` is given.
    func apply<S: BLASScalar>(
        _ z: UnsafePointer<S>, into y: UnsafeMutablePointer<S>, derivative d: UnsafeMutablePointer<S>?, count: Int
    ) {
        func cast<T>(_ p: UnsafePointer<S>, _: T.Type) -> UnsafePointer<T> { UnsafeRawPointer(p).assumingMemoryBound(to: T.self) }
        func cast<T>(_ p: UnsafeMutablePointer<S>, _: T.Type) -> UnsafeMutablePointer<T> {
            UnsafeMutableRawPointer(p).assumingMemoryBound(to: T.self)
        }
        if S.self == Float.self {
            kernel.float32(cast(z, Float.self), cast(y, Float.self), d.map { cast($0, Float.self) }, count)
        } else {
            kernel.float64(cast(z, Double.self), cast(y, Double.self), d.map { cast($0, Double.self) }, count)
        }
    }
}

/// An activation's loops, one per precision, each specialized for its rule when the
/// declaration builds it (the rule's type is concrete there), so the per-element code inlines
/// and vectorizes as a hand-written switch over rules would.
struct ActivationKernel: Sendable {
    let float32: @Sendable (UnsafePointer<Float>, UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>?, Int) -> Void
    let float64: @Sendable (UnsafePointer<Double>, UnsafeMutablePointer<Double>, UnsafeMutablePointer<Double>?, Int) -> Void
    let isIdentity: Bool
    /// The rule's ``ElementwiseRule/evaluationCost(_:)`` in each precision.
    let cost32: Int
    let cost64: Int

    @inline(__always)
    init<R: ElementwiseRule>(_ rule: R, isIdentity: Bool = false) {
        float32 = { z, y, d, n in Elementwise.run(rule, z, y, d, count: n) }
        float64 = { z, y, d, n in Elementwise.run(rule, z, y, d, count: n) }
        self.isIdentity = isIdentity
        cost32 = R.evaluationCost(Float.self)
        cost64 = R.evaluationCost(Double.self)
    }
}
