"""Known-answer vectors for the primitives the vault composes, and tamper tests.

Every failure to open must raise (DecryptionFailed / SignatureInvalid), never
return a value.
"""

from __future__ import annotations

import hmac as std_hmac
from dataclasses import replace

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vault.crypto import (
    DecryptionFailed,
    Envelope,
    FingerprintKey,
    Kek,
    RootKey,
    SealingKey,
    SignatureInvalid,
    SigningKey,
    new_symmetric_key,
    record_aad,
    seal,
    sealing_info,
    verify_key_set,
)
from vault.crypto._symmetric import hkdf_sha256, hmac_sha256, unwrap_key, wrap_key

# --- RFC 3394 AES key wrap (section 4) -----------------------------------------------

RFC3394 = [
    # 4.1: 128-bit data, 128-bit KEK
    ("000102030405060708090A0B0C0D0E0F", "00112233445566778899AABBCCDDEEFF",
     "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"),
    # 4.3: 128-bit data, 256-bit KEK
    ("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
     "00112233445566778899AABBCCDDEEFF", "64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7"),
    # 4.6: 256-bit data, 256-bit KEK (our case: AES-256 data key under an AES-256 KEK)
    ("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
     "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
     "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"),
]


@pytest.mark.parametrize(("kek", "data", "wrapped"), RFC3394)
def test_rfc3394_key_wrap(kek: str, data: str, wrapped: str) -> None:
    assert wrap_key(bytes.fromhex(kek), bytes.fromhex(data)) == bytes.fromhex(wrapped)
    assert unwrap_key(bytes.fromhex(kek), bytes.fromhex(wrapped)) == bytes.fromhex(data)


@pytest.mark.parametrize(("kek", "data", "wrapped"), RFC3394)
def test_rfc3394_tampered_wrap_raises(kek: str, data: str, wrapped: str) -> None:
    bad = bytearray(bytes.fromhex(wrapped))
    bad[5] ^= 0x01
    with pytest.raises(DecryptionFailed):
        unwrap_key(bytes.fromhex(kek), bytes(bad))
    with pytest.raises(DecryptionFailed):
        unwrap_key(bytes.fromhex(kek), bytes.fromhex(wrapped)[:-8])


# --- RFC 4231 HMAC-SHA256 (the fingerprint primitive) ---------------------------------

_LONG_KEY = "aa" * 131
RFC4231 = [
    ("0b" * 20, b"Hi There".hex(),
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe".hex(), b"what do ya want for nothing?".hex(),
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("aa" * 20, "dd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    ("0102030405060708090a0b0c0d0e0f10111213141516171819", "cd" * 50,
     "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    (_LONG_KEY, b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (_LONG_KEY, b"This is a test using a larger than block-size key and a larger than "
     b"block-size data. The key needs to be hashed before being used by the HMAC "
     b"algorithm.".hex(), "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize(("key", "data", "mac"), RFC4231)
def test_rfc4231_hmac_sha256(key: str, data: str, mac: str) -> None:
    assert hmac_sha256(bytes.fromhex(key), bytes.fromhex(data)).hex() == mac


# --- RFC 5869 HKDF-SHA256 (per-tenant fingerprint key derivation) --------------------

RFC5869 = [
    ("0b" * 22, "000102030405060708090a0b0c", "f0f1f2f3f4f5f6f7f8f9", 42,
     "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
    ("0b" * 22, "", "", 42,
     "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
]


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "okm"), RFC5869)
def test_rfc5869_hkdf_sha256(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    derived = hkdf_sha256(bytes.fromhex(ikm), salt=bytes.fromhex(salt) or None,
                          info=bytes.fromhex(info), length=length)
    assert derived.hex() == okm


def test_fingerprint_is_hmac_under_hkdf_tenant_key() -> None:
    key = bytes(range(32))
    fk = FingerprintKey(1, key)
    tenant_key = hkdf_sha256(key, salt=None, info=b"cardlink.vault.v1 fingerprint\x00acme")
    expected = std_hmac.new(tenant_key, b"4111111111111111", "sha256").hexdigest()
    assert fk.fingerprint("acme", "4111111111111111") == expected
    assert fk.fingerprint("acme", "4111111111111111") == expected  # cached path agrees


def test_fingerprint_differs_per_tenant_version_and_pan() -> None:
    key = new_symmetric_key()
    one, two = FingerprintKey(1, key), FingerprintKey(2, new_symmetric_key())
    pan = "4111111111111111"
    values = {one.fingerprint("acme", pan), one.fingerprint("beta", pan),
              two.fingerprint("acme", pan), one.fingerprint("acme", "5555555555554444")}
    assert len(values) == 4
    assert pan not in one.fingerprint("acme", pan)


# --- RFC 9180 HPKE --------------------------------------------------------------------
# cryptography's single-shot API takes no fixed ephemeral key and no AAD, so
# the RFC's ciphertexts cannot be replayed as they are. A.1.1 (X25519,
# HKDF-SHA256, AES-128-GCM, base mode) still pins the KEM and key schedule:
# the vector's recipient key, `enc` and `info` must yield the vector's
# `key`/`base_nonce`, which we check by opening a ciphertext made with them.
# (The RFC has no X25519 + AES-256-GCM vector; that suite gets round trips.)

A11_SKRM = "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8"
A11_PKRM = "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d"
A11_ENC = "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431"
A11_INFO = "4f6465206f6e2061204772656369616e2055726e"
A11_KEY = "4531685d41d65f03dc48f6b8302c05b0"
A11_BASE_NONCE = "56d890e5accaaf011cff4b7d"
A11_PT = "4265617574792069732074727574682c20747275746820626561757479"
A11_CT0 = ("f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e1"
           "3c512a")


def test_rfc9180_a11_vector_opens_with_library_key_schedule() -> None:
    recipient = X25519PrivateKey.from_private_bytes(bytes.fromhex(A11_SKRM))
    assert recipient.public_key().public_bytes_raw().hex() == A11_PKRM
    aead = AESGCM(bytes.fromhex(A11_KEY))
    nonce, plaintext = bytes.fromhex(A11_BASE_NONCE), bytes.fromhex(A11_PT)
    # The vector's own sequence-0 encryption (aad "Count-0") confirms key and nonce.
    assert aead.encrypt(nonce, plaintext, b"Count-0").hex() == A11_CT0
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    sealed = bytes.fromhex(A11_ENC) + aead.encrypt(nonce, plaintext, b"")
    assert suite.decrypt(sealed, recipient, info=bytes.fromhex(A11_INFO)) == plaintext
    with pytest.raises(InvalidTag):
        suite.decrypt(sealed, recipient, info=b"other info")


def test_sealing_round_trip_and_info_binds_tenant() -> None:
    key = SealingKey.generate()
    sealed = seal(key.public_key, b"card bytes", tenant="acme")
    assert key.open(sealed, tenant="acme") == b"card bytes"
    assert sealing_info("acme") == b"cardlink.vault.v1 sealed card\x00tenants/acme"
    with pytest.raises(DecryptionFailed):
        key.open(sealed, tenant="beta")
    with pytest.raises(DecryptionFailed):
        SealingKey.generate().open(sealed, tenant="acme")


def test_partner_sealing_helper_interoperates() -> None:
    from cardlink.vault.v1 import vault_pb2
    from clients import sealing

    key = SealingKey.generate()
    public = sealing.SealingPublicKey(key.key_id, X25519PublicKey.from_public_bytes(key.public_key),
                                      current=True)
    sealed = sealing.seal_card(public, "tenants/acme", vault_pb2.CardSecret(pan="4111111111111111"))
    opened = vault_pb2.CardSecret.FromString(key.open(sealed.ciphertext, tenant="acme"))
    assert opened.pan == "4111111111111111"


@pytest.mark.parametrize("position", [0, 31, 32, 40, -1])
def test_sealed_byte_flip_raises(position: int) -> None:
    key = SealingKey.generate()
    sealed = bytearray(seal(key.public_key, b"card bytes", tenant="acme"))
    sealed[position] ^= 0x80
    with pytest.raises(DecryptionFailed):
        key.open(bytes(sealed), tenant="acme")


@pytest.mark.parametrize("blob", [b"", b"x", b"\x00" * 32, b"\x00" * 48])
def test_garbage_sealed_raises(blob: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        SealingKey.generate().open(blob, tenant="acme")


def test_sealing_key_survives_export_and_id_follows_public_key() -> None:
    key = SealingKey.generate()
    again = SealingKey.from_private_bytes(key.private_bytes())
    assert (again.key_id, again.public_key) == (key.key_id, key.public_key)
    assert key.key_id.startswith("hpke-")
    assert key.key_id != SealingKey.generate().key_id
    assert key.private_bytes().hex() not in repr(key)


# --- Ed25519 key-set signatures ------------------------------------------------------


def test_key_set_signature_verifies_and_binds_context() -> None:
    signer = SigningKey.generate()
    signature = signer.sign_key_set(b"key set bytes")
    verify_key_set(signer.public_key, b"key set bytes", signature)
    with pytest.raises(SignatureInvalid):
        verify_key_set(signer.public_key, b"key set bytez", signature)
    with pytest.raises(SignatureInvalid):
        verify_key_set(SigningKey.generate().public_key, b"key set bytes", signature)
    with pytest.raises(SignatureInvalid):
        verify_key_set(signer.public_key, b"key set bytes", b"\x00" * 64)
    # Signed with the context label: a bare signature over the bytes is not accepted.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    raw = Ed25519PrivateKey.from_private_bytes(signer.private_bytes())
    with pytest.raises(SignatureInvalid):
        verify_key_set(signer.public_key, b"key set bytes", raw.sign(b"key set bytes"))


# --- record envelopes ----------------------------------------------------------------


def test_record_aad_layout() -> None:
    assert record_aad("acme", "ctk_x", 3) == b"cardlink.vault.v1 card\x00acme\x00ctk_x\x003"
    with pytest.raises(ValueError):
        record_aad("ac\x00me", "ctk_x", 3)


def test_envelope_round_trip_uses_fresh_data_key_and_nonce() -> None:
    kek = Kek(1, new_symmetric_key())
    first = kek.seal(b"secret", tenant="acme", token="ctk_a")
    second = kek.seal(b"secret", tenant="acme", token="ctk_a")
    assert kek.open(first, tenant="acme", token="ctk_a") == b"secret"
    assert first.wrapped_key != second.wrapped_key
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    assert first.kek_version == 1
    assert len(first.wrapped_key) == 40
    assert "secret" not in repr(first)


def _flip(data: bytes, index: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.fixture
def sealed_pair() -> tuple[Kek, Envelope]:
    kek = Kek(1, new_symmetric_key())
    return kek, kek.seal(b"4111111111111111", tenant="acme", token="ctk_a")


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda e: replace(e, ciphertext=_flip(e.ciphertext)), id="ciphertext-byte"),
        pytest.param(lambda e: replace(e, ciphertext=_flip(e.ciphertext, -1)), id="tag-byte"),
        pytest.param(lambda e: replace(e, ciphertext=e.ciphertext[:-1]), id="truncated"),
        pytest.param(lambda e: replace(e, nonce=_flip(e.nonce)), id="nonce"),
        pytest.param(lambda e: replace(e, nonce=b""), id="empty-nonce"),
        pytest.param(lambda e: replace(e, wrapped_key=_flip(e.wrapped_key)), id="wrapped-key"),
        pytest.param(lambda e: replace(e, wrapped_key=e.wrapped_key[:16]), id="short-wrap"),
        pytest.param(lambda e: replace(e, kek_version=2), id="version-label"),
    ],
)
def test_tampered_envelope_raises(sealed_pair: tuple[Kek, Envelope], tamper: object) -> None:
    kek, envelope = sealed_pair
    with pytest.raises(DecryptionFailed):
        kek.open(tamper(envelope), tenant="acme", token="ctk_a")  # type: ignore[operator]


@pytest.mark.parametrize(("tenant", "token"), [("beta", "ctk_a"), ("acme", "ctk_b")])
def test_wrong_context_raises(sealed_pair: tuple[Kek, Envelope], tenant: str, token: str) -> None:
    kek, envelope = sealed_pair
    with pytest.raises(DecryptionFailed):
        kek.open(envelope, tenant=tenant, token=token)


def test_wrong_kek_version_or_key_raises(sealed_pair: tuple[Kek, Envelope]) -> None:
    _, envelope = sealed_pair
    with pytest.raises(DecryptionFailed):
        Kek(1, new_symmetric_key()).open(envelope, tenant="acme", token="ctk_a")
    # Same key bytes under another version label: the AAD names the version.
    with pytest.raises(DecryptionFailed):
        Kek(2, new_symmetric_key()).open(replace(envelope, kek_version=2), tenant="acme",
                                         token="ctk_a")


def test_ciphertext_moved_to_another_record_does_not_open() -> None:
    kek = Kek(1, new_symmetric_key())
    a = kek.seal(b"card A", tenant="acme", token="ctk_a")
    b = kek.seal(b"card B", tenant="acme", token="ctk_b")
    with pytest.raises(DecryptionFailed):
        kek.open(a, tenant="acme", token="ctk_b")  # whole envelope moved
    with pytest.raises(DecryptionFailed):
        kek.open(replace(b, ciphertext=a.ciphertext, nonce=a.nonce), tenant="acme", token="ctk_b")
    with pytest.raises(DecryptionFailed):
        kek.open(replace(b, wrapped_key=a.wrapped_key), tenant="acme", token="ctk_b")


def test_kek_rejects_bad_keys_eagerly() -> None:
    with pytest.raises(ValueError):
        Kek(1, b"short")
    with pytest.raises(ValueError):
        Kek(0, new_symmetric_key())
    with pytest.raises(ValueError):
        FingerprintKey(1, b"\x00" * 16)


# --- root key ------------------------------------------------------------------------


def test_root_key_wrap_binds_label_and_key() -> None:
    root = RootKey(new_symmetric_key())
    blob = root.wrap(b"material", field="kek:1", key_id="kek-1")
    assert root.unwrap(blob, field="kek:1", key_id="kek-1") == b"material"
    with pytest.raises(DecryptionFailed):
        root.unwrap(blob, field="kek:2", key_id="kek-1")
    with pytest.raises(DecryptionFailed):
        root.unwrap(blob, field="kek:1", key_id="kek-2")
    with pytest.raises(DecryptionFailed):
        root.unwrap(_flip(blob, 20), field="kek:1", key_id="kek-1")
    with pytest.raises(DecryptionFailed):
        RootKey(new_symmetric_key()).unwrap(blob, field="kek:1", key_id="kek-1")
    assert "material" not in repr(root)
