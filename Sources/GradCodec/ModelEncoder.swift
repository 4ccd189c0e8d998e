import GradCore

/// Writes a validated model back in the model format, canonically: fixed key order, every
/// parameter named in `weights` and stored as base64 of its dtype. Equal models give equal
/// bytes, so the SHA-256 of this text is the model's registry id.
public enum ModelEncoder {
    /// The canonical model-format JSON of `model`.
    public static func canonical(_ model: AnyModel) -> [UInt8] {
        switch model {
        case .float32(let m): canonical(m)
        case .float64(let m): canonical(m)
        }
    }

    static func canonical<S: BLASScalar>(_ m: Model<S>) -> [UInt8] {
        var w = JSONWriter()
        w.beginObject()
        w.key("dtype")
        w.string(S.dtype.rawValue)
        w.key("inputs")
        w.beginArray()
        w.string("x")
        if m.hasT { w.string("t") }
        w.endArray()
        w.key("layers")
        w.beginArray()
        var weights: [(String, Tensor<S>)] = []
        var seen = Set<String>()
        for layer in m.layers {
            w.beginObject()
            switch layer {
            case .linear(let lin):
                w.key("op")
                w.string("linear")
                w.key("weight")
                w.string(lin.weightName)
                if seen.insert(lin.weightName).inserted { weights.append((lin.weightName, lin.weight)) }
                if let b = lin.bias, let name = lin.biasName {
                    w.key("bias")
                    w.string(name)
                    if seen.insert(name).inserted { weights.append((name, b)) }
                }
            case .activation(let a):
                w.key("op")
                w.string(a.op)
                for field in a.declaration.fields {
                    switch a.arguments.values[field.name] {
                    case .number(let x)?:
                        w.key(field.name)
                        w.number(x)
                    case .choice(let c)?:
                        w.key(field.name)
                        w.string(c)
                    case .other?, nil: break  // resolved arguments hold numbers and choices only
                    }
                }
            }
            w.endObject()
        }
        w.endArray()
        w.key("weights")
        w.beginObject()
        for (name, t) in weights {
            w.key(name)
            w.base64(t)
        }
        w.endObject()
        w.endObject()
        return w.bytes
    }
}
