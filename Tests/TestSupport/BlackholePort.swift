#if canImport(Glibc)
import Glibc
#endif

/// A loopback port where connecting hangs: a listening socket whose accept queue is full, so
/// Linux drops further SYNs and a client waits until its connect timeout. Closed on deinit.
public final class BlackholePort {
    public let port: Int
    private let sockets: [Int32]

    public struct SocketFailed: Error {
        public let call: String
        public let errno: Int32
    }

    public init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw SocketFailed(call: "socket", errno: errno) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 0) == 0 && getsockname(listener, pointer, &length) == 0
            }
        }
        guard bound else {
            close(listener)
            throw SocketFailed(call: "bind/listen", errno: errno)
        }
        // Fill the (backlog 0) accept queue with connections nobody accepts.
        var fillers: [Int32] = []
        for _ in 0..<2 {
            let filler = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard filler >= 0 else { continue }
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(filler, $0, length) }
            }
            fillers.append(filler)
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        sockets = [listener] + fillers
    }

    deinit {
        for socket in sockets { close(socket) }
    }
}
