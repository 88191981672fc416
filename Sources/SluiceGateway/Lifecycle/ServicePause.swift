import ServiceLifecycle

/// Sleeps for `duration` in a service loop; returns false at once (without waiting out the
/// sleep) when graceful shutdown begins or the task is cancelled.
func pauseUnlessShuttingDown(for duration: Duration) async -> Bool {
    guard !Task.isShuttingDownGracefully else { return false }
    do {
        try await cancelWhenGracefulShutdown { try await Task.sleep(for: duration) }
        return !Task.isShuttingDownGracefully
    } catch {
        return false
    }
}
