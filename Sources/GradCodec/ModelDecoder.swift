import GradCore

/// Reads the model format of docs/api.md (`inputs`, `dtype`, `layers`, `weights`) into a validated model.
public enum ModelDecoder {
    /// Decodes and validates the model object at `path` (e.g. `model`); every problem is reported with its full path.
    /// `binaryWeights` are named tensors from a binary body, merged into `weights`. A model with
    /// more than `maxLayers` layers is refused before any layer is decoded.
    public static func decode(
        _ value: JSONValue, at path: String = "model", binaryWeights: [String: AnyTensor] = [:], maxLayers: Int = .max
    ) throws(GradError) -> AnyModel {
        let spec = try decodeSpec(value, at: path, binaryWeights: binaryWeights, maxLayers: maxLayers)
        do {
            return try ModelBuilder.build(spec)
        } catch .invalid(let issues) {
            throw .invalid(issues.map { $0.within(model: path) })
        } catch {
            throw error
        }
    }

    /// Decodes the JSON into a ``ModelSpec`` (types, names and tensors), leaving shapes to ``ModelBuilder``.
    public static func decodeSpec(
        _ value: JSONValue, at path: String, binaryWeights: [String: AnyTensor] = [:], maxLayers: Int = .max
    ) throws(GradError) -> ModelSpec {
        guard case .object(let obj) = value else {
            throw .invalid(path, "expected a model object (or a registered model id string), got \(value.typeName)")
        }
        if case .array(let items)? = obj["layers"], items.count > maxLayers {
            throw .limitExceeded(
                place: .field("\(path).layers"), limit: "--max-layers",
                message: "the model has \(items.count) layers; this server accepts at most \(maxLayers)")
        }
        var issues: [FieldIssue] = []
        for key in obj.keys where !["inputs", "dtype", "layers", "weights"].contains(key) {
            issues.append(FieldIssue(path: "\(path).\(key)", message: "unknown field (a model has inputs, dtype, layers, weights)"))
        }
        var inputs = ["x"]
        if let v = obj["inputs"] {
            if case .array(let items) = v, items.allSatisfy({ if case .string = $0 { true } else { false } }) {
                inputs = items.map { if case .string(let s) = $0 { s } else { "" } }
            } else {
                issues.append(FieldIssue(path: "\(path).inputs", message: "expected [\"x\"] or [\"x\", \"t\"], got \(v.typeName)"))
            }
        }
        var dtype = DType.float32
        if let v = obj["dtype"] {
            if case .string(let s) = v, let d = DType(rawValue: s) {
                dtype = d
            } else {
                issues.append(FieldIssue(path: "\(path).dtype", message: "expected \"float32\" or \"float64\""))
            }
        }
        // Named weights.
        var named: [String: AnyTensor] = binaryWeights
        if let w = obj["weights"] {
            if case .object(let wobj) = w {
                for (name, tv) in wobj.entries {
                    do { named[name] = try TensorDecoder.decode(tv, at: "\(path).weights.\(name)") } catch .invalid(let more) {
                        issues += more
                    } catch {}
                }
            } else {
                issues.append(FieldIssue(path: "\(path).weights", message: "expected an object of named tensors, got \(w.typeName)"))
            }
        }
        var used = Set<String>()
        var layers: [LayerSpec] = []
        switch obj["layers"] {
        case nil:
            issues.append(FieldIssue(path: "\(path).layers", message: "required"))
        case .array(let items)?:
            if items.isEmpty { issues.append(FieldIssue(path: "\(path).layers", message: "must hold at least one layer")) }
            for (i, item) in items.enumerated() {
                let lp = "\(path).layers[\(i)]"
                do {
                    if let layer = try decodeLayer(item, at: lp, named: named, used: &used) { layers.append(layer) }
                } catch .invalid(let more) {
                    issues += more
                } catch {}
            }
        case .numbers(let s, _)? where s == [0]:
            issues.append(FieldIssue(path: "\(path).layers", message: "must hold at least one layer"))
        case let other?:
            issues.append(FieldIssue(path: "\(path).layers", message: "expected an array of layer objects, got \(other.typeName)"))
        }
        for name in named.keys.sorted() where !used.contains(name) && issues.isEmpty {
            issues.append(FieldIssue(path: "\(path).weights.\(name)", message: "not referenced by any layer"))
        }
        if !issues.isEmpty { throw .invalid(issues) }
        return ModelSpec(inputs: inputs, dtype: dtype, layers: layers)
    }

    /// Decodes one layer against its op's declaration (``OpDeclaration``): unknown ops and
    /// unknown fields are refused, defaults and checks come from the declaration.
    private static func decodeLayer(
        _ value: JSONValue, at lp: String, named: [String: AnyTensor], used: inout Set<String>
    ) throws(GradError) -> LayerSpec? {
        let known = OpDeclaration.names.joined(separator: ", ")
        guard case .object(let lobj) = value else { throw .invalid(lp, "expected a layer object, got \(value.typeName)") }
        guard case .string(let op)? = lobj["op"] else { throw .invalid("\(lp).op", "required: one of \(known)") }
        guard let declaration = OpDeclaration.named(op) else { throw .invalid("\(lp).op", "unknown op \"\(op)\"; expected one of \(known)") }
        var issues: [FieldIssue] = []
        var given: [String: OpValue] = [:]
        for (key, v) in lobj.entries where key != "op" {
            switch v {
            case .number(let x): given[key] = .number(x)
            case .string(let s): given[key] = .choice(s)
            default: given[key] = .other(kind: v.typeName)
            }
        }
        var parameters: [String: ParameterSpec] = [:]
        for field in declaration.fields {
            guard case .parameter(let required) = field.kind else { continue }
            given[field.name] = nil
            let fp = "\(lp).\(field.name)"
            switch lobj[field.name] {
            case nil:
                if required { issues.append(FieldIssue(path: fp, message: "required")) }
            case .string(let name)?:
                if let t = named[name] {
                    used.insert(name)
                    parameters[field.name] = ParameterSpec(name: name, tensor: t)
                } else {
                    issues.append(FieldIssue(path: fp, message: "names \"\(name)\", which is not an entry of weights"))
                }
            case let v?:
                do { parameters[field.name] = ParameterSpec(name: nil, tensor: try TensorDecoder.decode(v, at: fp)) } catch .invalid(let more) {
                    issues += more
                } catch {}
            }
        }
        let resolved = declaration.resolve(given)
        if case .failure(let problems) = resolved { issues += problems.list.map { FieldIssue(path: "\(lp).\($0.field)", message: $0.message) } }
        if !issues.isEmpty { throw .invalid(issues) }
        if declaration.isActivation, case .success(let arguments) = resolved { return .activation(declaration.activation(arguments)) }
        guard let weight = parameters["weight"] else { return nil }
        return .linear(weight: weight, bias: parameters["bias"])
    }
}

extension FieldIssue {
    /// The issue with a place inside the model (``Place/model(_:)``) spelled as a field path
    /// under `path`, where the model object sat in the request (`model.layers[2].weight`).
    public func within(model path: String) -> FieldIssue {
        switch place {
        case .model(nil): FieldIssue(path: path, message: message)
        case .model(let p?): FieldIssue(path: "\(path).\(p.path)", message: message)
        default: self
        }
    }
}
