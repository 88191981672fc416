import Testing
@testable import SluiceCore

struct SensitiveDataMaskTests {
    /// E-mail local parts, phone numbers, keys and bearer tokens are masked; the rest stays.
    @Test(arguments: [
        ("order for jane.doe@acme.example failed", "order for j***@acme.example failed"),
        ("call +49 171 1234567 now", "call ***67 now"),
        ("call (030) 123-4567", "call ***67"),
        ("call +49 171 123 45-6 7 now", "call ***67 now"),
        ("Authorization: Bearer ", "Authorization: Bearer "),
        ("from 2026-11-22 to 2026-1122-", "from 2026-11-22 to ***22-"),
        ("key sk_live_8f3kd93kd0 rejected", "key sk_*** rejected"),
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
        ("request 0af7651916cd43dd8448eb211c80319c took 12 ms", "request 0af7651916cd43dd8448eb211c80319c took 12 ms"),
        ("order 123456 of 2026-11-22", "order 123456 of 2026-11-22"),
        ("plain text", "plain text"),
        ("body larger than 10485760 bytes", "body larger than 10485760 bytes"),
        ("mobile 01711234567", "mobile ***67"),
        ("ids 12a3456789 and 1234567a", "ids 12a3456789 and 1234567a"),
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw is invalid", "secret whsec_*** is invalid"),
        ("key sk_test_acme+/=0000001 x", "key sk_*** x"),
    ])
    func masksSensitiveData(_ example: (input: String, expected: String)) {
        #expect(SensitiveDataMask.mask(example.input) == example.expected)
    }

    /// Paths are decoded before the rules apply, so escapes cannot hide personal data.
    @Test func encodedPathsAreMaskedToo() {
        #expect(SensitiveDataMask.maskPath("/v2/users/jane.doe%40acme.example/orders") == "/v2/users/j***@acme.example/orders")
        #expect(SensitiveDataMask.maskPath("/v2/callers/%2B49%20171%201234567") == "/v2/callers/***67")
        #expect(SensitiveDataMask.maskPath("/v2/orders/%ZZ%40") == "/v2/orders/%ZZ%40")
        #expect(SensitiveDataMask.maskPath("/v2/orders/%FF") == "/v2/orders/%FF")
        #expect(SensitiveDataMask.maskPath("/v2/orders/42") == "/v2/orders/42")
    }
}
