import NIOCore
import NIOHTTP1
import Prometheus

/// /metrics (Prometheus text), /healthz (the process is up), /readyz (listening and the primary reachable
/// by at least one server connection or a fresh login).
final class HTTPEndpointHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry
    let readiness: @Sendable () -> Bool
    private var path = "/"

    init(registry: PrometheusCollectorRegistry, readiness: @escaping @Sendable () -> Bool) {
        self.registry = registry
        self.readiness = readiness
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch self.unwrapInboundIn(data) {
        case .head(let head):
            self.path = String(head.uri.split(separator: "?").first ?? "/")
        case .body:
            break
        case .end:
            var status = HTTPResponseStatus.ok
            var contentType = "text/plain; charset=utf-8"
            var body = context.channel.allocator.buffer(capacity: 4096)
            switch self.path {
            case "/metrics":
                var bytes: [UInt8] = []
                self.registry.emit(into: &bytes)
                body.writeBytes(bytes)
                contentType = "text/plain; version=0.0.4; charset=utf-8"
            case "/healthz":
                body.writeString("ok\n")
            case "/readyz":
                if self.readiness() {
                    body.writeString("ready\n")
                } else {
                    status = .serviceUnavailable
                    body.writeString("not ready\n")
                }
            default:
                status = .notFound
                body.writeString("not found: try /metrics, /healthz or /readyz\n")
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: "\(body.readableBytes)")
            headers.add(name: "Connection", value: "close")
            context.write(self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
        }
    }
}
