import Testing

@testable import GradServer

/// The hand-written header helpers against what Foundation's formatting and trimming gave.
@Suite("Header values")
struct HeaderValueTests {
    @Test func serverTimingMilliseconds() {
        #expect(ServerTiming.milliseconds(0.000_083_2) == "0.083")
        #expect(ServerTiming.milliseconds(0.0125) == "12.500")
        #expect(ServerTiming.milliseconds(1.234_567_8) == "1234.568")
        #expect(ServerTiming.milliseconds(0.000_000_4) == "0.000")
        #expect(ServerTiming.milliseconds(0.000_999_6) == "1.000")
        #expect(ServerTiming.milliseconds(-1) == "0.000")
        #expect(ServerTiming.milliseconds(.nan) == "0.000")
        #expect(ServerTiming.value([("read", 0.00024), ("compute", 0.00083)]) == "read;dur=0.240, compute;dur=0.830")
        #expect(ServerTiming.value([]) == "")
    }

    @Test func mediaType() {
        #expect(RequestDocument.mediaType(nil) == nil)
        #expect(RequestDocument.mediaType("application/json") == "application/json")
        #expect(RequestDocument.mediaType(" Application/Octet-Stream ; charset=binary") == "application/octet-stream")
        #expect(RequestDocument.mediaType("\tapplication/json\t;") == "application/json")
        #expect(RequestDocument.mediaType("") == "")
        #expect(RequestDocument.mediaType(";x=1") == "")
        #expect(RequestDocument.mediaType("   ") == "")
    }
}
