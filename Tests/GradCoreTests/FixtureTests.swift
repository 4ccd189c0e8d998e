import Foundation
import GradCodec
import GradCore
import Testing

/// One PyTorch reference case written by `scripts/make_fixtures.py`.
struct Fixture {
    let name: String
    let root: JSONObject

    static let directory = Bundle.module.url(forResource: "Fixtures", withExtension: nil)!

    static var names: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
            .filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    init(_ name: String) throws {
        self.name = name
        let data = try Data(contentsOf: Self.directory.appendingPathComponent(name + ".json"))
        guard case .object(let o) = try JSONParser.parse([UInt8](data)) else { throw GradError.invalid("", "not an object") }
        root = o
    }

    func value(_ path: [String]) -> JSONValue? {
        var v: JSONValue = .object(root)
        for key in path {
            guard case .object(let o) = v, let next = o[key] else { return nil }
            v = next
        }
        return v
    }

    func tensor<S: BLASScalar>(_ path: String...) throws -> Tensor<S>? {
        guard let v = value(path) else { return nil }
        return try TensorDecoder.decode(v, at: path.joined(separator: ".")).cast(to: S.self)
    }

    func model() throws -> AnyModel { try ModelDecoder.decode(root["model"]!) }

    func paramNames() -> [String] {
        guard case .object(let o)? = value(["expected", "vjp", "params"]) else { return [] }
        return o.keys
    }
}

@Suite("PyTorch reference fixtures")
struct FixtureTests {
    @Test("fixtures are present") func present() {
        #expect(Fixture.names.count >= 12, "found \(Fixture.names)")
    }

    @Test("matches PyTorch", arguments: Fixture.names)
    func matchesPyTorch(name: String) throws {
        let f = try Fixture(name)
        switch try f.model() {
        case .float32(let m): try check(m, f, tol: 1e-5)
        case .float64(let m): try check(m, f, tol: 1e-10)
        }
    }

    func check<S: BLASScalar>(_ m: Model<S>, _ f: Fixture, tol: Double) throws {
        let inputs = Inputs<S>(x: try f.tensor("x")!, t: try f.tensor("t"))
        let wrt: Set<GradTarget> = m.hasT ? [.x, .t, .params] : [.x, .params]
        expectClose(try m.forward(inputs), try f.tensor("expected", "outputs"), tol: tol, "\(f.name) outputs")

        let v = try m.vjp(inputs, gradOutputs: try f.tensor("grad_outputs")!, wrt: wrt)
        expectClose(v.outputs, try f.tensor("expected", "outputs"), tol: tol, "\(f.name) vjp outputs")
        expectClose(v.x, try f.tensor("expected", "vjp", "x"), tol: tol, "\(f.name) vjp x")
        if m.hasT { expectClose(v.t, try f.tensor("expected", "vjp", "t"), tol: tol, "\(f.name) vjp t") }
        let names = f.paramNames()
        if !names.isEmpty {
            #expect(Set(v.params.map(\.name)) == Set(names), "\(f.name) parameter names")
            for (name, g) in v.params {
                expectClose(g, try f.tensor("expected", "vjp", "params", name), tol: tol, "\(f.name) vjp params.\(name)")
            }
        }

        if let vb: Tensor<S> = try f.tensor("grad_outputs_batched") {
            let r = try m.vjp(inputs, gradOutputs: vb, isGradsBatched: true, wrt: wrt)
            expectClose(r.x, try f.tensor("expected", "vjp_batched", "x"), tol: tol, "\(f.name) batched vjp x")
            if m.hasT { expectClose(r.t, try f.tensor("expected", "vjp_batched", "t"), tol: tol, "\(f.name) batched vjp t") }
            for (name, g) in r.params where f.value(["expected", "vjp_batched", "params", name]) != nil {
                expectClose(g, try f.tensor("expected", "vjp_batched", "params", name), tol: tol, "\(f.name) batched vjp params.\(name)")
            }
        }

        let j = try m.jvp(inputs, tangentX: try f.tensor("tangents", "x"), tangentT: try f.tensor("tangents", "t"))
        expectClose(j.jvp, try f.tensor("expected", "jvp"), tol: tol, "\(f.name) jvp")
        if let tx: Tensor<S> = try f.tensor("tangents_batched", "x") {
            let jb = try m.jvp(inputs, tangentX: tx, tangentT: try f.tensor("tangents_batched", "t"))
            expectClose(jb.jvp, try f.tensor("expected", "jvp_batched"), tol: tol, "\(f.name) batched jvp")
        }

        if f.value(["expected", "jacobian"]) != nil {
            let jwrt: Set<GradTarget> = m.hasT ? [.x, .t] : [.x]
            for mode in JacobianMode.allCases {
                let jac = try m.jacobian(inputs, wrt: jwrt, mode: mode)
                expectClose(jac.x, try f.tensor("expected", "jacobian", "x"), tol: tol, "\(f.name) jacobian x (\(mode))")
                if m.hasT { expectClose(jac.t, try f.tensor("expected", "jacobian", "t"), tol: tol, "\(f.name) jacobian t (\(mode))") }
            }
        }
        if let div: Tensor<S> = try f.tensor("expected", "divergence") {
            expectClose(try m.divergence(inputs), div, tol: tol, "\(f.name) divergence")
        }
    }
}
