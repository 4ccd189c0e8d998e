import NIOCore

/// Lets each connection read up to ``maximum`` bytes per socket read instead of NIO's default
/// 64 KiB, so an 800 kB tensor body arrives in a few reads, not thirteen (each read is a
/// syscall, a trip through the HTTP decoder and a hand-off to the request's task). NIO's adaptive
/// allocator still starts small and grows only when reads fill the buffer, so connections that
/// send small requests keep small buffers.
///
/// Installed in the service's pipeline and the transport floor's, so both measure the same stack.
final class ReadSize: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    static let maximum = 1 << 20

    func handlerAdded(context: ChannelHandlerContext) {
        context.channel.setOption(
            ChannelOptions.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: Self.maximum)
        ).whenComplete { _ in }
    }
}
