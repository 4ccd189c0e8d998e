import Foundation
import GradCodec
import GradServer
import Hummingbird
import HummingbirdTesting
import Logging
import Testing

/// A server configuration with a fresh data directory.
func testConfiguration(_ mutate: (inout ServerConfiguration) -> Void = { _ in }) -> ServerConfiguration {
    var c = ServerConfiguration()
    c.port = 0
    c.dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("gradserve-test-\(UUID().uuidString)").path
    c.workers = 2
    mutate(&c)
    return c
}

func quietLogger() -> Logger {
    var l = Logger(label: "gradserve-test")
    l.logLevel = .critical
    return l
}

/// A small model with t: Linear(3 → 2) → SELU (D = 2, D' = 2).
let tinyModel = #"{"inputs": ["x", "t"], "layers": [{"op": "linear", "weight": [[1, 2, 3], [4, 5, 6]], "bias": [0.5, -0.5]}, {"op": "selu"}]}"#
let tinyInputs = #"{"x": [[0.1, 0.2], [0.3, -0.4]], "t": [0.5, 1]}"#

extension TestResponse {
    /// The body parsed as JSON (`null` when it is not JSON).
    var json: JSONValue { (try? JSONParser.parse(Array(body.readableBytesView))) ?? .null }

    /// The body as text.
    var text: String { String(buffer: body) }

    /// The `errors[].path` values of a problem answer.
    var problemPaths: [String] {
        guard case .object(let o) = json, case .array(let errs)? = o["errors"] else { return [] }
        return errs.compactMap { if case .object(let e) = $0, case .string(let p)? = e["path"] { p } else { nil } }
    }
}

extension JSONValue {
    subscript(_ key: String) -> JSONValue? {
        if case .object(let o) = self { return o[key] }
        return nil
    }

    var numbers: [Double]? {
        switch self {
        case .numbers(_, let v): v
        case .number(let n): [n]
        default: nil
        }
    }

    var string: String? { if case .string(let s) = self { s } else { nil } }
}

func body(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

let jsonHeaders: HTTPFields = [.contentType: "application/json"]
