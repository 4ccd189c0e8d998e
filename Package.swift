// swift-tools-version:6.1
import PackageDescription

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
            ]
        ),
        .target(
            name: "GradCodec",
            dependencies: ["GradCore", .product(name: "ExtrasBase64", package: "swift-extras-base64")]
        ),
        .executableTarget(
            name: "gradserve",
            dependencies: [
                "GradCore",
                "GradCodec",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
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
    ]
)
