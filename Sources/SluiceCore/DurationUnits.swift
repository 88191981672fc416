/// The one place durations become numbers (store arguments, log fields, metrics, headers).
extension Duration {
    /// Whole milliseconds, rounded down.
    public var milliseconds: Int64 {
        components.seconds * 1_000 + components.attoseconds / 1_000_000_000_000_000
    }

    /// Whole microseconds, rounded down.
    public var microseconds: Int64 {
        components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000
    }

    /// Whole nanoseconds, rounded down.
    public var nanoseconds: Int64 {
        components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
    }

    /// Seconds as a floating-point number (metrics).
    public var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }

    /// Milliseconds with microsecond precision (log fields).
    public var fractionalMilliseconds: Double {
        Double(microseconds) / 1_000
    }

    /// Whole seconds rounded up, at least 1 (`Retry-After`).
    public var wholeSecondsRoundedUp: Int {
        max(1, Int(seconds.rounded(.up)))
    }
}
