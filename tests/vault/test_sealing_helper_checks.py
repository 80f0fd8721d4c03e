"""What the partner sealing helper accepts from a (possibly relayed) key set:
only a signature by a pinned key, only the key marked current to seal new
cards to, and only keys it can actually seal to and the vault still opens.

Key sets built here are signed with keys the test pins; the end-to-end cases
run against a real vault on loopback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cardlink.vault.v1 import vault_pb2
from clients.sealing import (
    KEY_SET_CONTEXT,
    MISS_REFETCH_S,
    KeySetError,
    SealingKeyCache,
    seal_card,
    sealed_card_info,
    verify_key_set,
)
from tests.support.cards import card
from tests.support.vault import VaultHandle
from vault import Actor
from vault.keyring import SEALING

NOW = 1_800_000_000.0
SIGNER_ID = "vsk-pinned"
SUITE = (0x0020, 0x0001, 0x0002)  # DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM
CURRENT = vault_pb2.SealingKey.STATE_CURRENT
PREVIOUS = vault_pb2.SealingKey.STATE_PREVIOUS


def _key(key_id: str, state: vault_pb2.SealingKey.State.ValueType, *,
         suite: tuple[int, int, int] = SUITE, expire: float | None = None,
         private: X25519PrivateKey | None = None) -> vault_pb2.SealingKey:
    private = private or X25519PrivateKey.generate()
    kem, kdf, aead = suite
    key = vault_pb2.SealingKey(key_id=key_id, kem_id=kem, kdf_id=kdf, aead_id=aead,
                               public_key=private.public_key().public_bytes_raw(), state=state)
    key.create_time.FromNanoseconds(int((NOW - 86_400) * 1e9))
    if expire is not None:
        key.expire_time.FromNanoseconds(int(expire * 1e9))
    return key


def _signed(keys: list[vault_pb2.SealingKey], signer: Ed25519PrivateKey,
            signer_id: str = SIGNER_ID, issue_time: float = NOW) -> vault_pb2.SealingKeySet:
    """A key set signed the way the vault signs one."""
    content = vault_pb2.SealingKeySetContent(keys=keys)
    content.issue_time.FromNanoseconds(int(issue_time * 1e9))
    key_set = content.SerializeToString(deterministic=True)
    return vault_pb2.SealingKeySet(key_set=key_set, signatures=[vault_pb2.KeySetSignature(
        signing_key_id=signer_id, signature=signer.sign(KEY_SET_CONTEXT + key_set))])


# --- only a pinned signer ------------------------------------------------------------


async def test_a_key_set_signed_only_by_an_unpinned_key_is_refused(vault: VaultHandle) -> None:
    """A relay substituting its own sealing key, under a valid signature by its
    own signing key, is refused: the helper never seals a card to it."""
    relay_signer = Ed25519PrivateKey.generate()
    substituted = _signed([_key("vhk-relay", CURRENT)], relay_signer, "vsk-relay",
                          issue_time=vault.clock.now())
    relay_pins = {"vsk-relay": relay_signer.public_key()}
    assert verify_key_set(substituted, relay_pins, now=vault.clock.now()).current().key_id == (
        "vhk-relay")  # the signature is valid for the relay's own key ...
    pins = await vault.pins()
    assert "vsk-relay" not in pins
    with pytest.raises(KeySetError):  # ... which the partner never pinned
        verify_key_set(substituted, pins, now=vault.clock.now())

    async def relayed() -> vault_pb2.SealingKeySet:
        return substituted

    cache = SealingKeyCache(relayed, pins, wall_clock=vault.clock.now)
    with pytest.raises(KeySetError):
        await cache.current()


async def test_the_vault_s_own_key_set_is_refused_under_pins_that_do_not_name_its_signer(
        vault: VaultHandle) -> None:
    """Genuine signatures by a signing key the partner did not pin (another
    vault's, say) do not make a key set trusted."""
    signed = await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())
    pins = await vault.pins()
    assert verify_key_set(signed, pins, now=vault.clock.now()).current()  # genuine
    elsewhere = {"vsk-other-vault": Ed25519PrivateKey.generate().public_key()}
    assert not set(elsewhere) & {s.signing_key_id for s in signed.signatures}
    with pytest.raises(KeySetError):
        verify_key_set(signed, elsewhere, now=vault.clock.now())


# --- the current key -----------------------------------------------------------------


@pytest.mark.parametrize("order", [
    ("vhk-old", "vhk-new"),
    ("vhk-new", "vhk-old"),
    ("vhk-older", "vhk-new", "vhk-old"),
], ids=["after", "before", "between"])
async def test_new_cards_are_sealed_to_the_key_marked_current_wherever_it_is_listed(
        order: tuple[str, ...]) -> None:
    """Not to the first or last key listed: a previous key stops opening cards
    when its grace period ends, so a card sealed to it would be refused."""
    signer = Ed25519PrivateKey.generate()
    new = X25519PrivateKey.generate()
    keys = [_key("vhk-new", CURRENT, private=new) if key_id == "vhk-new"
            else _key(key_id, PREVIOUS, expire=NOW + 3600) for key_id in order]
    verified = verify_key_set(_signed(keys, signer), {SIGNER_ID: signer.public_key()}, now=NOW)
    assert [k.key_id for k in verified.keys] == list(order)
    current = verified.current()
    assert current.key_id == "vhk-new"
    sealed = seal_card(current, "tenants/acme", card())
    assert sealed.key_id == "vhk-new"
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    opened = suite.decrypt(sealed.ciphertext, new, sealed_card_info("tenants/acme"))
    assert vault_pb2.CardSecret.FromString(opened) == card()


async def test_after_a_sealing_key_rotation_cards_go_to_the_new_key(vault: VaultHandle) -> None:
    """The rotated vault lists the new key and the previous one (in its grace
    period); the helper seals to the new one and the vault tokenizes it."""
    old = (await (await vault.key_cache()).current()).key_id
    rotated = await vault.vault.admin.rotate(SEALING, Actor("security"))
    signed = await vault.stub.GetSealingKeySet(vault_pb2.GetSealingKeySetRequest())
    listed = verify_key_set(signed, await vault.pins(), now=vault.clock.now())
    assert {k.key_id for k in listed.keys} == {old, rotated.key_id} and old != rotated.key_id
    cache = await vault.key_cache()
    current = await cache.current()
    assert current.key_id == rotated.key_id
    created = await vault.stub.TokenizeCard(vault_pb2.TokenizeCardRequest(
        parent="tenants/acme", sealed_card=seal_card(current, "tenants/acme", card())),
        metadata=vault.partner())
    assert created.token.name.startswith("tenants/acme/tokens/ctk_")


# --- keys the helper cannot use --------------------------------------------------------


async def test_keys_of_another_suite_or_past_their_grace_period_are_dropped() -> None:
    """The verified set lists only keys the helper can seal to (its one HPKE
    suite) and the vault still opens (no expiry, or expiry still ahead)."""
    signer = Ed25519PrivateKey.generate()
    keys = [
        _key("vhk-x448", PREVIOUS, suite=(0x0021, 0x0001, 0x0002), expire=NOW + 3600),
        _key("vhk-sha384", PREVIOUS, suite=(0x0020, 0x0002, 0x0002), expire=NOW + 3600),
        _key("vhk-chacha", PREVIOUS, suite=(0x0020, 0x0001, 0x0003), expire=NOW + 3600),
        _key("vhk-current", CURRENT),
        _key("vhk-expired", PREVIOUS, expire=NOW - 1),
        _key("vhk-expires-now", PREVIOUS, expire=NOW),
        _key("vhk-in-grace", PREVIOUS, expire=NOW + 1),
    ]
    verified = verify_key_set(_signed(keys, signer), {SIGNER_ID: signer.public_key()}, now=NOW)
    assert [k.key_id for k in verified.keys] == ["vhk-current", "vhk-in-grace"]
    assert verified.current().key_id == "vhk-current"
    # Looked up by id (to re-seal to a key the vault named), a dropped key is absent.
    assert {k.key_id: verified.key(k.key_id, NOW) is not None for k in keys} == {
        k.key_id: k.key_id in ("vhk-current", "vhk-in-grace") for k in keys}


UNUSABLE: dict[str, tuple[tuple[int, int, int], float | None]] = {
    "unsupported KEM": ((0x0021, 0x0001, 0x0002), None),  # DHKEM(X448, HKDF-SHA512)
    "unsupported KDF": ((0x0020, 0x0003, 0x0002), None),  # HKDF-SHA512
    "unsupported AEAD": ((0x0020, 0x0001, 0x0001), None),  # AES-128-GCM
    "expired": (SUITE, NOW - 60),
    "expiring now": (SUITE, NOW),
}


@pytest.mark.parametrize("what", list(UNUSABLE))
async def test_a_key_set_with_no_usable_current_key_gives_nothing_to_seal_to(what: str) -> None:
    """A set whose only key (marked current) is one the helper cannot use has no
    current key: current() raises KeySetError instead of sealing a card the
    vault could not open."""
    suite, expire = UNUSABLE[what]
    signer = Ed25519PrivateKey.generate()
    signed = _signed([_key("vhk-unusable", CURRENT, suite=suite, expire=expire)], signer)
    verified = verify_key_set(signed, {SIGNER_ID: signer.public_key()}, now=NOW)
    assert [k.key_id for k in verified.keys] == [], what
    with pytest.raises(KeySetError):
        verified.current()


class _KeySetSource:
    """What the cache fetches from: one signed set, fetches counted; from fetch
    ``fail_from`` on, the vault is down."""

    def __init__(self, keys: list[vault_pb2.SealingKey], fail_from: int = 0) -> None:
        self._signer = Ed25519PrivateKey.generate()
        self._signed = _signed(keys, self._signer)
        self._fail_from = fail_from
        self.fetches = 0

    async def fetch(self) -> vault_pb2.SealingKeySet:
        self.fetches += 1
        if self._fail_from and self.fetches >= self._fail_from:
            raise ConnectionError("the vault is down")
        return self._signed

    def cache(self, monotonic: Callable[[], float],
              wall_clock: Callable[[], float]) -> SealingKeyCache:
        return SealingKeyCache(self.fetch, {SIGNER_ID: self._signer.public_key()},
                               refresh_s=300, monotonic=monotonic, wall_clock=wall_clock)


async def test_key_cache_does_not_return_a_key_past_its_grace_period() -> None:
    source = _KeySetSource([_key("vhk-current", CURRENT),
                            _key("vhk-old", PREVIOUS, expire=NOW + 10)])
    clock = [NOW]
    cache = source.cache(lambda: clock[0] - NOW, lambda: clock[0])
    assert (await cache.key("vhk-old")).key_id == "vhk-old"
    clock[0] = NOW + 60  # the grace period ended 50 s ago; the cached set is 60 s old
    with pytest.raises(KeySetError):
        await cache.key("vhk-old")


async def test_key_cache_does_not_refetch_without_bound_for_an_unknown_id() -> None:
    source = _KeySetSource([_key("vhk-current", CURRENT)])
    cache = source.cache(lambda: 0.0, lambda: NOW)
    for _ in range(100):
        with pytest.raises(KeySetError):
            await cache.key("vhk-nope")
    assert source.fetches == 1


async def test_key_cache_does_not_refetch_without_bound_while_fetches_fail() -> None:
    """A vault that is down (or a relay serving a set the helper refuses) is
    not asked again for every unknown id: a failed fetch counts as a fetch."""
    source = _KeySetSource([_key("vhk-current", CURRENT)], fail_from=2)
    elapsed = [0.0]
    cache = source.cache(lambda: elapsed[0], lambda: NOW)
    await cache.current()
    elapsed[0] += MISS_REFETCH_S
    with pytest.raises(ConnectionError):
        await cache.key("vhk-made-since")
    for _ in range(100):
        with pytest.raises(KeySetError):
            await cache.key("vhk-made-since")
    assert source.fetches == 2
