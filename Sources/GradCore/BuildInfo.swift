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
        guard let line = CPUInfo.field("flags") else { return true }
        let flags = Set(line.split(separator: " "))
        return flags.contains("avx2") && flags.contains("fma")
    }
}
