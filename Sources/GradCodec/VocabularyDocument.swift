import GradCore

/// The model format's op vocabulary (``OpDeclaration/all``) rendered for readers: the op table
/// of `docs/api.md` and the layer schemas of `openapi.yaml`. Both files hold the rendering
/// between marker lines, and a test (`VocabularyDocumentTests`) fails when they drift from the
/// declarations; `GRADSERVE_WRITE_VOCABULARY=1 swift test --filter VocabularyDocument` rewrites them.
public enum VocabularyDocument {
    /// The Markdown table of every op: fields with defaults, formula, PyTorch module.
    public static func markdownTable() -> String {
        var lines = ["| op | fields | formula | PyTorch |", "|---|---|---|---|"]
        for op in OpDeclaration.all {
            let fields = op.fields.map { f -> String in
                switch f.kind {
                case .parameter(let required): "`\(f.name)` (\(required ? "required" : "optional")): \(f.summary)"
                case .number(let d): "`\(f.name)` = \(OpField.format(d)): \(f.summary)"
                case .choice(let options, let d): "`\(f.name)` ∈ {\(options.map { "`\"\($0)\"`" }.joined(separator: ", "))} = `\"\(d)\"`: \(f.summary)"
                }
            }
            lines.append("| `\(op.name)` | \(fields.isEmpty ? "—" : fields.joined(separator: "<br>")) | `\(op.formula)` | `\(op.pytorch)` |")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The OpenAPI component schemas (`OpName`, `Layer` and one `…Layer` per op), indented to
    /// sit under `components.schemas`.
    public static func openAPISchemas() -> String {
        var y: [String] = []
        y.append("    OpName:")
        y.append("      description: The op of a layer.")
        y.append("      type: string")
        y.append("      enum: [\(OpDeclaration.names.joined(separator: ", "))]")
        y.append("    Layer:")
        y.append("      description: One layer; activations follow PyTorch's formulas and defaults.")
        y.append("      oneOf:")
        for op in OpDeclaration.all { y.append("        - $ref: '#/components/schemas/\(schemaName(op))'") }
        for op in OpDeclaration.all {
            y.append("    \(schemaName(op)):")
            y.append("      description: \(quoted("`\(op.formula)` (PyTorch `\(op.pytorch)`)."))")
            y.append("      type: object")
            y.append("      additionalProperties: false")
            let required = ["op"] + op.fields.compactMap { if case .parameter(true) = $0.kind { $0.name } else { nil } }
            y.append("      required: [\(required.joined(separator: ", "))]")
            y.append("      properties:")
            y.append("        op:")
            y.append("          const: \(op.name)")
            for f in op.fields {
                y.append("        \(f.name):")
                y.append("          description: \(quoted(f.summary))")
                switch f.kind {
                case .parameter: y.append("          $ref: '#/components/schemas/TensorOrName'")
                case .number(let d):
                    y.append("          type: number")
                    if let excluded = f.excluded {
                        y.append("          not:")
                        y.append("            const: \(OpField.format(excluded))")
                    }
                    y.append("          default: \(OpField.format(d))")
                case .choice(let options, let d):
                    y.append("          type: string")
                    y.append("          enum: [\(options.joined(separator: ", "))]")
                    y.append("          default: \(d)")
                }
            }
        }
        return y.joined(separator: "\n") + "\n"
    }

    /// `leaky_relu` → `LeakyReluLayer`.
    static func schemaName(_ op: OpDeclaration) -> String {
        op.name.split(separator: "_").map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined() + "Layer"
    }

    /// A YAML single-quoted scalar.
    static func quoted(_ s: String) -> String { "'" + s.split(separator: "'", omittingEmptySubsequences: false).joined(separator: "''") + "'" }
}
