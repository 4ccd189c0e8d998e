import GradCore

/// How a front end spells the core's places (``Place``) in its own protocol's terms.
struct PlaceNames: Sendable {
    /// The front end's own names; nil falls back to the `/v1` spelling.
    private let own: @Sendable (Place) -> String?

    /// The path of `place` as this front end's clients see it.
    func callAsFunction(_ place: Place) -> String { own(place) ?? Self.v1Name(place) }

    /// `/v1`: the request's field names (`inputs.x`, `grad_outputs`, `tangents.t`, `model.layers[2].weight`).
    static let v1 = PlaceNames { _ in nil }

    /// The Tesseract runtime's field names (`cotangent_vector.y`, `tangent_vector.x`, `jac_inputs`).
    static let tesseract = PlaceNames { place in
        switch place {
        case .cotangent: "cotangent_vector.y"
        case .tangent(let i?): "tangent_vector.\(i.rawValue)"
        case .tangent(nil): "tangent_vector"
        case .wrt: "jac_inputs"
        default: nil
        }
    }

    /// UM-Bridge's argument names (`input[0]`, `sens`, `vec`).
    static let umbridge = PlaceNames { place in
        switch place {
        case .input(.x): "input[0]"
        case .input(.t): "input[1]"
        case .cotangent: "sens"
        case .tangent: "vec"
        default: nil
        }
    }

    private static func v1Name(_ place: Place) -> String {
        switch place {
        case .input(let i): "inputs.\(i.rawValue)"
        case .tangent(let i?): "tangents.\(i.rawValue)"
        case .tangent(nil): "tangents"
        case .cotangent: "grad_outputs"
        case .wrt: "wrt"
        case .probes: "probes"
        case .solver(.timeGrid): "time_grid"
        case .solver(.stepSize): "step_size"
        case .solver(.atol): "atol"
        case .solver(.rtol): "rtol"
        case .solver(.maxSteps): "max_steps"
        case .model(nil): "model"
        case .model(let p?): "model.\(p.path)"
        case .field(let f): f
        }
    }
}
