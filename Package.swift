// swift-tools-version: 6.0
import PackageDescription

let strict: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .unsafeFlags(["-warnings-as-errors"]),
]

let package = Package(
    name: "ext4iomap",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "fuservicemount", targets: ["fuservicemount"]),
        .executable(name: "ext4iomapd", targets: ["Ext4IomapServer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
    ],
    targets: [
        // Small C shims: crc32c, ioctl/CMSG/syscall wrappers Swift cannot express.
        .target(name: "CShim"),
        .systemLibrary(name: "CMount", pkgConfig: "mount",
                       providers: [.apt(["libmount-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd",
                       providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp",
                       providers: [.apt(["libseccomp-dev"])]),

        // FUSE kernel protocol (ABI 7.45 + iomap 7.99). No ext4 knowledge.
        .target(name: "FuseKernel",
                dependencies: ["CShim",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "SystemPackage", package: "swift-system")],
                swiftSettings: strict),
        // ext4 engine. No FUSE knowledge.
        .target(name: "Ext4Engine",
                dependencies: ["CShim",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "SystemPackage", package: "swift-system")],
                swiftSettings: strict),
        // The FUSE face of the ext4 engine: the only target that sees both.
        // Knows nothing of its environment (sandbox, systemd, libmount, the
        // helper): facts reach it as values at construction.
        .target(name: "Ext4Fuse",
                dependencies: ["FuseKernel", "Ext4Engine",
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: strict),
        // The daemon: service mode, standalone mode, the sandbox, systemd, option parsing.
        .target(name: "Ext4Server",
                dependencies: ["Ext4Fuse", "FuseKernel", "Ext4Engine", "ServiceBroker", "LoopDevices", "CMount",
                               "CSystemd", "CSeccomp", "CShim",
                               .product(name: "Logging", package: "swift-log")],
                swiftSettings: strict),
        .target(name: "LoopDevices",
                dependencies: ["CShim",
                               .product(name: "SystemPackage", package: "swift-system")],
                swiftSettings: strict),
        .target(name: "ServiceBroker",
                dependencies: ["CShim", "LoopDevices", "CMount",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "SystemPackage", package: "swift-system")],
                swiftSettings: strict),

        .executableTarget(name: "fuservicemount",
                          dependencies: ["ServiceBroker",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          swiftSettings: strict),
        .executableTarget(name: "Ext4IomapServer",
                          dependencies: ["Ext4Server", "Ext4Fuse", "ServiceBroker", "CSystemd", "CSeccomp",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Logging", package: "swift-log")],
                          swiftSettings: strict),

        // Test-only C target: exposes <linux/fuse.h> layouts for cross-checking.
        .target(name: "CFuseHeaderCheck", path: "Tests/CFuseHeaderCheck"),
        // Tools, scratch directories and deterministic data for every test target.
        .target(name: "TestSupport", dependencies: ["LoopDevices"], path: "Tests/TestSupport", swiftSettings: strict),
        // The socket test kernel shared by the test targets.
        .target(name: "FuseTestSupport", dependencies: ["FuseKernel", .product(name: "Logging", package: "swift-log")],
                path: "Tests/FuseTestSupport", swiftSettings: strict),
        .testTarget(name: "FuseKernelTests",
                    dependencies: ["FuseKernel", "FuseTestSupport", "CFuseHeaderCheck", "CShim"],
                    swiftSettings: strict),
        .testTarget(name: "Ext4EngineTests",
                    dependencies: ["Ext4Engine", "CShim", "TestSupport"],
                    swiftSettings: strict),
        .testTarget(name: "Ext4ServerTests",
                    dependencies: ["Ext4Server", "Ext4Fuse", "ServiceBroker", "FuseKernel", "FuseTestSupport", "Ext4Engine", "CShim", "TestSupport"],
                    swiftSettings: strict),
        .testTarget(name: "IomapTests",
                    dependencies: ["Ext4Server", "Ext4Fuse", "FuseKernel", "Ext4Engine", "CShim", "TestSupport",
                                   "ServiceBroker", "LoopDevices"],
                    swiftSettings: strict),
        .testTarget(name: "LoopDevicesTests",
                    dependencies: ["LoopDevices", "CShim", "TestSupport"],
                    swiftSettings: strict),
        .testTarget(name: "ServiceBrokerTests",
                    dependencies: ["ServiceBroker", "LoopDevices", "CShim", "TestSupport"],
                    exclude: ["Resources"],
                    swiftSettings: strict),
    ]
)
