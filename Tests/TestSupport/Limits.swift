public import SluiceCore

/// Admission limits for tests: only the parts given are limited.
public func limits(
    rate: Double? = nil, burst: Int = 10, quota: Int? = nil, per: LimitSet.QuotaWindow = .day, concurrency: Int? = nil, cost: Int = 1
) -> AdmissionLimits {
    AdmissionLimits(
        LimitSet(
            rate: rate.map { LimitSet.Rate(perSecond: $0, burst: burst) },
            quota: quota.map { LimitSet.Quota(requests: $0, per: per) },
            concurrency: concurrency
        ),
        cost: cost
    )
}
