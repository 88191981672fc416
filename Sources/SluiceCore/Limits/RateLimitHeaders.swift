/// The IETF `RateLimit-Policy` and `RateLimit` header fields (SPEC §3) and `Retry-After`.
public enum RateLimitHeaders {
    /// `"rate";q=BURST;w=SECONDS_TO_FILL, "quota";q=N;w=WINDOW_SECONDS`, or nil without limits.
    public static func policy(_ limits: AdmissionLimits, _ decision: AdmissionDecision) -> String? {
        let quotaWindow = limits.quota == nil ? nil : decision.quotaWindowMilliseconds
        guard limits.ratePerSecond != nil || quotaWindow != nil else { return nil }
        var value = ""
        value.reserveCapacity(64)
        if let rate = limits.ratePerSecond {
            value += "\"rate\";q="
            value += String(Int(limits.burst))
            value += ";w="
            value += String(Int((limits.burst / rate).rounded(.up)))
        }
        if let quota = limits.quota, let window = quotaWindow {
            if !value.isEmpty { value += ", " }
            value += "\"quota\";q="
            value += String(quota)
            value += ";w="
            value += String(window / 1_000)
        }
        return value
    }

    /// `"NAME";r=REMAINING;t=SECONDS` for the policy closest to exhaustion (smallest share left).
    public static func state(_ limits: AdmissionLimits, _ decision: AdmissionDecision) -> String? {
        var best: (name: String, share: Double, remaining: Int, seconds: Int64)?
        if limits.ratePerSecond != nil, let remaining = decision.tokensRemaining, let full = decision.bucketFullInMilliseconds {
            best = ("rate", Double(remaining) / max(1, limits.burst), remaining, seconds(full))
        }
        if let quota = limits.quota, let remaining = decision.quotaRemaining, let reset = decision.quotaResetInMilliseconds {
            let share = Double(remaining) / Double(max(1, quota))
            if best == nil || share < best!.share { best = ("quota", share, remaining, seconds(reset)) }
        }
        guard let best else { return nil }
        var value = "\""
        value.reserveCapacity(40)
        value += best.name
        value += "\";r="
        value += String(best.remaining)
        value += ";t="
        value += String(best.seconds)
        return value
    }

    /// Whole seconds to wait, never 0 when the caller must wait.
    public static func retryAfter(_ decision: AdmissionDecision) -> Int {
        max(1, Int(seconds(decision.retryAfterMilliseconds)))
    }

    private static func seconds(_ milliseconds: Int64) -> Int64 {
        max(0, (milliseconds + 999) / 1_000)
    }
}
