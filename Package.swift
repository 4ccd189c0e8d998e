// swift-tools-version:6.1
import Foundation
import PackageDescription

// The elementwise kernels (activation rules, derivative scaling) vectorize with AVX2/FMA, which
// made the ToyMLP VJP/JVP at B = 256 ~5% faster here. Every x86-64 server CPU since 2013 has
// them; `gradserve` checks at start and says so if not. GRADSERVE_PORTABLE=1 builds without.
#if arch(x86_64)
    let vectorISA: [SwiftSetting] =
        ProcessInfo.processInfo.environment["GRADSERVE_PORTABLE"] == nil
        ? [.unsafeFlags(["-target-cpu", "haswell"]), .define("GRADCORE_AVX2")] : []
#else
    let vectorISA: [SwiftSetting] = []
#endif

// Every target declares exactly the modules it imports (toolchain modules aside: Foundation,
// Dispatch, Synchronization, Testing): `scripts/check_imports.py` checks both directions in CI,
// and `scripts/test.sh` builds with SwiftPM's `--explicit-target-dependency-import-check error`.
let package = Package(
    name: "gradserve",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "gradserve", targets: ["gradserve"]),
        .library(name: "GradCore", targets: ["GradCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-numerics", from: "1.0.0"),
        .package(url: "https://github.com/swift-extras/swift-extras-base64", from: "1.2.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        .target(
            name: "GradCore",
            dependencies: [
                "COpenBLAS",
                .product(name: "RealModule", package: "swift-numerics"),
            ],
            swiftSettings: vectorISA
        ),
        .target(
            name: "GradCodec",
            dependencies: ["GradCore", .product(name: "ExtrasBase64", package: "swift-extras-base64")]
        ),
        .target(
            name: "GradServer",
            dependencies: [
                "GradCore",
                "GradCodec",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ExtrasBase64", package: "swift-extras-base64"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            resources: [.copy("Resources/openapi.yaml")]
        ),
        .executableTarget(
            name: "gradserve",
            dependencies: [
                "GradCore",
                "GradServer",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "GradCoreTests",
            dependencies: ["GradCore", "GradCodec"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(
            name: "GradCodecTests",
            dependencies: ["GradCodec", "GradCore"]
        ),
        .testTarget(
            name: "GradServerTests",
            dependencies: [
                "GradServer", "GradCodec", "GradCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
    ]
)
