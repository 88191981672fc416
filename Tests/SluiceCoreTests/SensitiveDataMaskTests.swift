import Testing
@testable import SluiceCore

struct SensitiveDataMaskTests {
    /// E-mail local parts, phone numbers, keys and bearer tokens are masked; the rest stays.
    @Test(arguments: [
        ("order for jane.doe@acme.example failed", "order for j***@acme.example failed"),
        ("call +49 171 1234567 now", "call ***67 now"),
        ("call (030) 123-4567", "call ***67"),
        ("key sk_live_8f3kd93kd0 rejected", "key sk_*** rejected"),
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
        ("request 0af7651916cd43dd8448eb211c80319c took 12 ms", "request 0af7651916cd43dd8448eb211c80319c took 12 ms"),
        ("order 123456 of 2026-11-22", "order 123456 of 2026-11-22"),
        ("plain text", "plain text"),
        ("body larger than 10485760 bytes", "body larger than 10485760 bytes"),
        ("mobile 01711234567", "mobile ***67"),
        ("ids 12a3456789 and 1234567a", "ids 12a3456789 and 1234567a"),
    ])
    func masksSensitiveData(_ example: (input: String, expected: String)) {
        #expect(SensitiveDataMask.mask(example.input) == example.expected)
    }
}
