#if canImport(Glibc)
    import Glibc
#endif

/// How this build of the core was compiled, and whether this CPU can run it.
public enum BuildInfo {
    /// True when the core was compiled for AVX2/FMA (`-target-cpu haswell`).
    public static var requiresAVX2: Bool {
        #if GRADCORE_AVX2
            return true
        #else
            return false
        #endif
    }

    /// Whether this CPU reports the `avx2` and `fma` flags (Linux `/proc/cpuinfo`; true elsewhere).
    public static var cpuHasAVX2: Bool {
        guard let f = fopen("/proc/cpuinfo", "r") else { return true }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 8192)
        while fgets(&line, Int32(line.count), f) != nil {
            let s = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if s.hasPrefix("flags") {
                let flags = Set(s.split(separator: " ").map { $0.trimmingCharacters(in: "\n\t :") })
                return flags.contains("avx2") && flags.contains("fma")
            }
        }
        return true
    }
}
