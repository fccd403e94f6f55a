"""X-Hub-Signature-256 signing and verification."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from bot.whatsapp.signature import sign, verify

SECRET = "app-secret-for-tests"
BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def test_sign_matches_hmac_sha256() -> None:
    expected = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, SECRET) == f"sha256={expected}"


def test_verify_accepts_own_signature() -> None:
    assert verify(BODY, sign(BODY, SECRET), SECRET)


def test_verify_accepts_uppercase_hex_and_whitespace() -> None:
    header = sign(BODY, SECRET)
    assert verify(BODY, " sha256=" + header.removeprefix("sha256=").upper() + " ", SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=",
        "sha1=" + hashlib.sha1(BODY).hexdigest(),  # noqa: S324
        "sha256=" + "0" * 64,
        "sha256=zz",
        "sha256=é" * 3,
        hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest(),  # missing prefix
    ],
)
def test_verify_rejects(header: str | None) -> None:
    assert not verify(BODY, header, SECRET)


def test_verify_rejects_other_body_or_secret() -> None:
    header = sign(BODY, SECRET)
    assert not verify(BODY + b" ", header, SECRET)
    assert not verify(BODY, header, SECRET + "x")
    assert not verify(BODY, header, "")
