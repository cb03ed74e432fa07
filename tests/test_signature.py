from ringez_worker import signature


def test_sign_is_lowercase_hex_hmac_sha256_of_the_raw_body():
    # Reference value computed independently: echo -n '{"a":1}' | openssl dgst -sha256 -hmac k
    assert signature.sign(b'{"a":1}', "k") == (
        "c3a92ff9e274cdcce27a58c15a78ec6dcbbdbd0038a87e7a11baef2028fd8bff"
    )


def test_verify_accepts_the_right_signature_in_any_case():
    body = b'{"event":"call.answered"}'
    sig = signature.sign(body, b"s1")
    assert signature.verify(body, sig, [b"s1"])
    assert signature.verify(body, sig.upper(), [b"s1"])
    assert signature.verify(body, f"  {sig} ", [b"s1"])


def test_verify_rejects_other_bodies_secrets_and_garbage():
    body = b'{"event":"call.answered"}'
    sig = signature.sign(body, b"s1")
    assert not signature.verify(body + b" ", sig, [b"s1"])
    assert not signature.verify(body, sig, [b"s2"])
    assert not signature.verify(body, "0" * 64, [b"s1"])
    assert not signature.verify(body, "", [b"s1"])
    assert not signature.verify(body, sig, [])


def test_any_configured_secret_matches_during_rotation():
    body = b"{}"
    assert signature.verify(body, signature.sign(body, b"old"), [b"new", b"old"])
    assert signature.verify(body, signature.sign(body, b"new"), [b"new", b"old"])


def test_well_formed():
    assert signature.is_well_formed("a" * 64)
    assert signature.is_well_formed("A" * 64)
    assert not signature.is_well_formed("g" * 64)
    assert not signature.is_well_formed("a" * 63)
    assert not signature.is_well_formed("sha256=" + "a" * 57)
