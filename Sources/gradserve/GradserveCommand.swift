import ArgumentParser
import Foundation
import GradCore

@main
struct GradserveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gradserve",
        abstract: "Derivatives of neural networks as a service: VJPs, JVPs, Jacobians and divergences on OpenBLAS.",
        subcommands: [BenchCommand.self, VersionCommand.self])
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version and BLAS build.")
    func run() {
        print("gradserve \(GradserveVersion.current)")
        print(BLASRuntime.config)
    }
}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Print a timing report: the seed's nn.Linear(1000, 1000) loop and the ToyMLP cells.")

    @Option(help: "Timed iterations per ToyMLP workload.") var iterations = 50
    @Option(help: "Iterations of the seed nn.Linear(1000, 1000) loop.") var seedIterations = 500
    @Option(help: "Iterations of the one-row-at-a-time Jacobian loop.") var rowloopIterations = 3
    @Option(help: "OpenBLAS threads per call.") var threads = 1
    @Option(help: "Stop a workload after this many seconds (at least 3 iterations run).") var maxSeconds: Double?
    @Option(help: "Run only workloads whose name contains this (repeatable).") var only: [String] = []
    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        guard threads >= 1, iterations >= 1, seedIterations >= 1, rowloopIterations >= 1 else {
            throw ValidationError("--threads and the iteration counts must be at least 1")
        }
    }

    func run() throws {
        MemoryPolicy.keepLargeBlocks()
        BLASRuntime.setThreads(threads)
        var suite = StandardSuite()
        suite.iterations = iterations
        suite.seedIterations = seedIterations
        suite.rowLoopIterations = rowloopIterations
        suite.maxSecondsPerWorkload = maxSeconds ?? .infinity
        suite.only = only
        let report = try suite.run()
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.table)
        }
    }
}
