import ServiceLifecycle

/// Turns `/readyz` to 503 as soon as shutdown begins (it is the last service, so the first stopped).
struct DrainOnShutdown: Service {
    let runtime: GatewayRuntime

    func run() async throws {
        try? await gracefulShutdown()
        runtime.beginDraining()
        runtime.logger.info("shutting down: not ready, draining in-flight requests")
    }
}
