import Foundation

/// The name of this gateway instance in task histories and as the queue consumer:
/// host name, process id and a random suffix (a restarted process is a new consumer).
enum InstanceName {
    static func make() -> String {
        let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "gateway"
        return "\(host)-\(ProcessInfo.processInfo.processIdentifier)-\(UInt16.random(in: 0...UInt16.max))"
    }
}
