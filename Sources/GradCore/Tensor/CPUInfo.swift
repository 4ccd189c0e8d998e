#if canImport(Glibc)
    import Glibc
#endif

/// Reads `/proc/cpuinfo` (Linux); nil elsewhere or when the field is missing.
enum CPUInfo {
    /// The value after the colon of the first line starting with `name` (`model name`, `flags`).
    static func field(_ name: String) -> String? {
        guard let f = fopen("/proc/cpuinfo", "r") else { return nil }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 8192)
        while fgets(&line, Int32(line.count), f) != nil {
            let s = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if s.hasPrefix(name), let colon = s.firstIndex(of: ":") {
                return s[s.index(after: colon)...].trimmingCharacters(in: " \n\t")
            }
        }
        return nil
    }
}
