"""The fast path for common addresses agrees with email-validator, address for address."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from schemas.submission import _fast_normalise

LOCAL_CHARS = "abcXYZ019.!#$%&'*+/=?^_`{|}~-\"(),:;<>@[\\] éμßＡﬁ\u0301\u200d\u00a0\u2028😀"
DOMAIN_CHARS = 'abcXYZ019.-_éüßＥｅ例\u0301\u200d<>" @'
TLDS = ["com", "org", "IT", "test", "local", "invalid", "onion", "arpa", "localhost", "1", "c0m",
        "xn--p1ai", "x"]  # fmt: skip


def library(address: str) -> str | None:
    try:
        normalized: str = validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return None
    return normalized


addresses = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join([*labels, tld])}",
    st.text(LOCAL_CHARS, min_size=0, max_size=70),
    st.lists(st.text(DOMAIN_CHARS, min_size=0, max_size=64), min_size=0, max_size=4),
    st.sampled_from(TLDS),
)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(addresses)
@example("Postmaster@Example.COM")
@example("a..b@example.com")
@example(".a@example.com")
@example("a@-example.com")
@example("a@example..com")
@example("a@xn--80a1acny.xn--p1ai")
@example("a" * 64 + "@example.com")
@example("a" * 65 + "@example.com")
@example("a@" + "b" * 63 + ".com")
@example("a@" + "b" * 64 + ".com")
@example("a@" + ".".join(["b" * 60] * 4) + ".com")
@example("a@localhost")
@example("a@bücher.de")
@example("a@ｅｘａｍｐｌｅ.org")
@example("Postmaster@例え.jp")
@example("a" * 60 + "@" + ".".join(["ü" * 40] * 4) + ".de")
@example("a@example")
@example("μαρία.x@mail.ru")
@example("e\u0301@example.com")
@example("\u0301e@example.com")
@example("ü" * 64 + "@example.com")
@example("ü" * 65 + "@example.com")
@example("ü" * 60 + "@" + ".".join(["b" * 60] * 3) + ".com")
def test_fast_path_matches_the_library(address: str) -> None:
    fast = _fast_normalise(address)
    if fast is not None:  # when the fast path decides, it decides as the library does
        assert fast == library(address)


COMMON = [
    "mario.rossi@example.org",
    "A.B+tag@Gmail.COM",
    "x_y-z@sub.mail.co.uk",
    "ivan@почта.рф",
    "μαρία.x@mail.ru",
    "josé@example.org",
]


@given(st.sampled_from(COMMON))
def test_fast_path_takes_the_common_case(address: str) -> None:
    assert _fast_normalise(address) == library(address) is not None
