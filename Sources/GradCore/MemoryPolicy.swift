/// Process-wide allocator settings for large tensors.
public enum MemoryPolicy {
    /// Keeps freed large blocks (Jacobians of tens of MB) in the heap instead of returning them
    /// to the kernel, so the next request reuses warm pages instead of page-faulting fresh ones.
    ///
    /// glibc mmaps every block above its dynamic threshold (at most 32 MB) and unmaps it on free;
    /// measured here, that alone made the B = 16 ToyMLP Jacobian (39 MB) take 39 ms instead of 17 ms.
    public static func keepLargeBlocks(upTo bytes: Int = 1 << 30) {
        #if os(Linux)
            _ = glibcMallopt(-3, Int32(clamping: bytes))  // M_MMAP_THRESHOLD
            _ = glibcMallopt(-1, Int32(clamping: 2 * bytes))  // M_TRIM_THRESHOLD
        #endif
    }
}

#if os(Linux)
    // `mallopt` lives in <malloc.h>, which the Glibc module does not export.
    @_silgen_name("mallopt")
    private func glibcMallopt(_ param: Int32, _ value: Int32) -> Int32
#endif

extension MemoryPolicy {
    /// One malloc arena for every thread, so that ``returnFreePages()`` can give everything back:
    /// glibc's `malloc_trim` releases the free top of the main arena only, and the per-thread
    /// arenas (compute workers, event loops) would keep their last large blocks resident forever.
    /// Small allocations stay per thread (tcache); the large ones are few per request. Call it
    /// before a second thread allocates: glibc fixes its arena limit when it first creates one.
    public static func singleArena() {
        #if os(Linux)
            _ = glibcMallopt(-8, 1)  // M_ARENA_MAX
        #endif
    }

    /// Returns freed heap pages to the kernel (`malloc_trim(0)`), so the resident size comes back
    /// down after a large request. Costs the next large request its warm pages; call when idle.
    public static func returnFreePages() {
        #if os(Linux)
            _ = glibcMallocTrim(0)
        #endif
    }
}

#if os(Linux)
    @_silgen_name("malloc_trim")
    private func glibcMallocTrim(_ pad: Int) -> Int32
#endif
