"""The token vault's domain service: tokenize, get, delete, detokenize, key set.

Plain async Python over the keyring, the store and the audit log. Raises
``common.errors`` classes with stable reasons; never imports grpc.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError
from redis.asyncio import Redis

from cardlink.vault.v1 import vault_pb2
from common.clock import Clock
from common.errors import (
    Aborted,
    CardLinkError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    invalid_field,
)
from common.logging import count_digits, scrub_card_numbers
from common.request_ids import is_uuid4
from vault.access import TENANT_MISMATCH
from vault.audit import (
    DELETE,
    DETOKENIZE,
    RESULT_INTENT,
    RESULT_OK,
    AuditEntry,
    AuditLog,
    AuditSink,
)
from vault.crypto import AEAD_ID, KDF_ID, KEM_ID, DecryptionFailed, Kek
from vault.keyring import (
    DEFAULT_SETTLE_SECONDS,
    DevKeyFile,
    Keyring,
    KeySnapshot,
    RootKeyProvider,
    SealingKeyVersion,
)
from vault.pan import CardDisplay, CardSecret, validate_card
from vault.store import StoredRecord, VaultStore
from vault.tokens import (
    check_tenant,
    check_token,
    is_tenant,
    is_token,
    new_token,
    parse_token_name,
    token_name,
)

MAX_SEALED_CARD_BYTES = 4096
MAX_KEY_ID_CHARS = 64
MAX_REASON_CHARS = 200

SEALED_CARD_INVALID = "SEALED_CARD_INVALID"
SEALED_CARD_UNREADABLE = "SEALED_CARD_UNREADABLE"
SEALING_KEY_ID_INVALID = "SEALING_KEY_ID_INVALID"
SEALING_KEY_UNKNOWN = "SEALING_KEY_UNKNOWN"
SEALING_KEY_EXPIRED = "SEALING_KEY_EXPIRED"
TOKEN_NOT_FOUND = "TOKEN_NOT_FOUND"  # noqa: S105 (an error reason, not a secret)
REASON_INVALID = "REASON_INVALID"
REQUEST_ID_INVALID = "REQUEST_ID_INVALID"
REQUEST_ID_FIELD = "request_id"
CALLER_INVALID = "CALLER_INVALID"
RECORD_UNREADABLE = "RECORD_UNREADABLE"
TOKENIZE_CONFLICT = "TOKENIZE_CONFLICT"

CIPHERTEXT_FIELD = "sealed_card.ciphertext"
KEY_ID_FIELD = "sealed_card.key_id"
# Each retry means a concurrent delete or a 2**-128 token collision.
_TOKENIZE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is calling (the JWT subject) and the request id, for the audit log."""

    caller: str
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token's metadata and display data; never the PAN. Times are epoch seconds."""

    tenant: str
    token: str
    display: CardDisplay
    create_time: float
    update_time: float

    @property
    def name(self) -> str:
        return token_name(self.tenant, self.token)


@dataclass(frozen=True, slots=True)
class TokenizeResult:
    record: TokenRecord
    already_known: bool


@dataclass(frozen=True, slots=True)
class KeySetSignature:
    signing_key_id: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class SignedKeySet:
    """A serialized ``SealingKeySetContent`` and its Ed25519 signatures."""

    key_set: bytes
    signatures: tuple[KeySetSignature, ...]


@dataclass(frozen=True, slots=True)
class _CachedKeySet:
    generation: int
    valid_until: float
    value: SignedKeySet


def _not_found() -> NotFound:
    # Identical for "never existed" and "another tenant's": nothing to tell apart.
    return NotFound(TOKEN_NOT_FOUND, "token not found")


def _unreadable() -> InvalidArgument:
    return invalid_field(CIPHERTEXT_FIELD, "the sealed card does not open", SEALED_CARD_UNREADABLE)


def card_to_bytes(card: CardSecret) -> bytes:
    message = vault_pb2.CardSecret(
        pan=card.pan, expiry_month=card.expiry_month, expiry_year=card.expiry_year,
        holder_name=card.holder_name, national_id=card.national_id, phone=card.phone,
    )
    return message.SerializeToString(deterministic=True)


def card_from_bytes(data: bytes) -> CardSecret:
    message = vault_pb2.CardSecret.FromString(data)
    return CardSecret(message.pan, message.expiry_month, message.expiry_year,
                      message.holder_name, message.national_id, message.phone)


def _record(stored: StoredRecord) -> TokenRecord:
    return TokenRecord(stored.tenant, stored.token, stored.display, stored.create_time,
                       stored.update_time)


def _check_sealed_input(key_id: str, sealed: bytes) -> None:
    if not key_id or len(key_id) > MAX_KEY_ID_CHARS or not key_id.isascii():
        raise invalid_field(KEY_ID_FIELD, f"must be 1-{MAX_KEY_ID_CHARS} ASCII characters",
                            SEALING_KEY_ID_INVALID)
    if not sealed or len(sealed) > MAX_SEALED_CARD_BYTES:
        raise invalid_field(CIPHERTEXT_FIELD, f"must be 1-{MAX_SEALED_CARD_BYTES} bytes",
                            SEALED_CARD_INVALID)


def has_card_number(text: str) -> bool:
    """True when ``text`` could spell a card number however written: what the
    audit log would mask (``common.logging.scrub_card_numbers``). A reason is
    refused for it rather than kept masked, so the log keeps it exactly."""
    return scrub_card_numbers(text) != text


def spells_nothing(*parts: str) -> bool:
    """True unless ``parts``, side by side, could spell a card number."""
    joined = " ".join(parts)
    return scrub_card_numbers(joined) == joined


def _check_reason(reason: str) -> str:
    if not 0 < len(reason) <= MAX_REASON_CHARS or not reason.isprintable() or not reason.strip():
        raise invalid_field("reason", f"must be 1-{MAX_REASON_CHARS} printable characters",
                            REASON_INVALID)
    if has_card_number(reason):
        raise invalid_field("reason", "must not hold 12 or more digits with only spaces or "
                            "punctuation between them (a card number, however written)",
                            REASON_INVALID)
    return reason


def _reason_loggable(reason: str) -> bool:
    try:
        _check_reason(reason)
    except InvalidArgument:
        return False
    return True


def request_id_valid(request_id: str) -> bool:
    """Empty, or a UUID4 in its canonical hyphenated spelling (any letter case)."""
    return not request_id or is_uuid4(request_id)


def check_request_id(request_id: str) -> str:
    """``request_id`` if empty or a UUID4; INVALID_ARGUMENT REQUEST_ID_INVALID otherwise."""
    if not request_id_valid(request_id):
        raise invalid_field(REQUEST_ID_FIELD, "must be empty or a UUID4", REQUEST_ID_INVALID)
    return request_id


def _check_actor(actor: Actor) -> Actor:
    if not actor.caller:
        raise Internal(CALLER_INVALID, "the caller is not identified")
    check_request_id(actor.request_id)
    return actor


@dataclass(frozen=True, slots=True)
class AuditTarget:
    """What an audit entry of a refused call may show of the request: each part
    only if it passed its check (a malformed name, reason or request id may
    carry a card number), and only as long as the parts could not spell one
    together either (half in one, half in another): else empty."""

    tenant: str = ""
    token: str = ""
    reason: str = ""
    request_id: str = ""

    @classmethod
    def of(cls, tenant: str, token: str, reason: str = "", request_id: str = "") -> AuditTarget:
        target = cls(tenant if is_tenant(tenant) else "", token if is_token(token) else "",
                     reason if _reason_loggable(reason) else "",
                     request_id if request_id_valid(request_id) else "")
        # Parts that could spell a card number side by side: first the free
        # text and request id go, then the tenant (the token is scrubbed where
        # it is stored).
        if spells_nothing(target.tenant, target.token, target.reason, target.request_id):
            return target
        if spells_nothing(target.tenant, target.token):
            return cls(target.tenant, target.token)
        return cls(token=target.token)

    def unprivileged(self) -> AuditTarget:
        """What an entry keeps of a request by a caller not entitled to the call:
        a tenant only without digits, the token, the reason only if it and the
        token hold fewer than 12 digits together, no request id. Digits spread
        over fields could be read together as a card number."""
        tenant = self.tenant if count_digits(self.tenant) == 0 else ""
        few = count_digits(self.token) + count_digits(self.reason) < 12
        return AuditTarget(tenant, self.token, self.reason if few else "")

    @classmethod
    def of_name(cls, name: str, reason: str = "", request_id: str = "") -> AuditTarget:
        """The target of a call on the token resource ``name`` as the request spelled it."""
        try:
            parsed = parse_token_name(name)
        except CardLinkError:
            return cls.of("", "", reason, request_id)
        return cls.of(parsed.tenant, parsed.token, reason, request_id)


class VaultService:
    """The vault's operations. Construct once per process; safe for concurrent use."""

    def __init__(self, *, store: VaultStore, keyring: Keyring, audit: AuditSink, clock: Clock,
                 key_set_max_age: float = 60.0) -> None:
        self._store = store
        self._keyring = keyring
        self._audit = audit
        self._clock = clock
        self._key_set_max_age = key_set_max_age
        self._key_set: _CachedKeySet | None = None

    @classmethod
    def create(cls, redis: Redis, *, prefix: str, clock: Clock,
               root_keys: RootKeyProvider | None = None, dev_key_file: Path | None = None,
               keyring_refresh_seconds: float = 1.0,
               key_settle_seconds: float = DEFAULT_SETTLE_SECONDS) -> VaultService:
        """Wire a service on one Redis client (``decode_responses=False``).

        Pass ``root_keys`` (production) or ``dev_key_file`` (development).
        A production keyring is created by the init ceremony, never on first use.
        """
        if root_keys is None:
            if dev_key_file is None:
                raise ValueError("give root_keys or dev_key_file")
            root_keys = DevKeyFile(dev_key_file)
        keyring = Keyring(redis, prefix=prefix, root_keys=root_keys, clock=clock,
                          refresh_seconds=keyring_refresh_seconds,
                          create_if_missing=dev_key_file is not None,
                          settle_seconds=key_settle_seconds)
        return cls(store=VaultStore(redis, prefix=prefix), keyring=keyring,
                   audit=AuditLog(redis, prefix=prefix, keyring=keyring), clock=clock)

    @property
    def store(self) -> VaultStore:
        return self._store

    @property
    def audit(self) -> AuditSink:
        return self._audit

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    # --- sealing key set ------------------------------------------------------

    async def sealing_key_set(self) -> SignedKeySet:
        """The usable sealing public keys (current first), signed by every signing key."""
        keys = await self._keyring.snapshot()
        now = self._clock.now()
        cached = self._key_set
        if cached is not None and cached.generation == keys.generation and now < cached.valid_until:
            return cached.value
        usable = keys.usable_sealing_keys(now)
        content = vault_pb2.SealingKeySetContent(keys=[self._public_key(k) for k in usable])
        content.issue_time.FromNanoseconds(int(now * 1e9))
        key_set = content.SerializeToString(deterministic=True)
        value = SignedKeySet(key_set, tuple(
            KeySetSignature(s.key.key_id, s.key.sign_key_set(key_set)) for s in keys.signing_keys
        ))
        # Re-sign when a listed key's grace period ends, so it drops out on time.
        ends = [k.expire_time for k in usable if k.expire_time is not None]
        self._key_set = _CachedKeySet(keys.generation,
                                      min([now + self._key_set_max_age, *ends]), value)
        return value

    @staticmethod
    def _public_key(entry: SealingKeyVersion) -> vault_pb2.SealingKey:
        # Only a superseded key has an expiry; the current one never does.
        state = vault_pb2.SealingKey.STATE_CURRENT if entry.expire_time is None else (
            vault_pb2.SealingKey.STATE_PREVIOUS)
        key = vault_pb2.SealingKey(key_id=entry.key_id, kem_id=KEM_ID, kdf_id=KDF_ID,
                                   aead_id=AEAD_ID, public_key=entry.key.public_key, state=state)
        key.create_time.FromNanoseconds(int(entry.create_time * 1e9))
        if entry.expire_time is not None:
            key.expire_time.FromNanoseconds(int(entry.expire_time * 1e9))
        return key

    # --- tokenize ---------------------------------------------------------------

    async def tokenize(self, tenant: str, key_id: str, sealed_ciphertext: bytes,
                       actor: Actor) -> TokenizeResult:
        """Open a sealed card and return its token (the existing one for a known card)."""
        check_tenant(tenant, field="parent")
        _check_actor(actor)
        _check_sealed_input(key_id, sealed_ciphertext)
        keys = await self._keyring.snapshot()
        sealing, keys = await self._sealing_key(keys, key_id)
        card = self._open_sealed(sealing, tenant, sealed_ciphertext)
        plaintext = card_to_bytes(card)
        # Every live fingerprint version is consulted; the mapping is written under
        # the write version (a freshly rotated one is lookup-only until settled).
        write = self._keyring.fingerprint_write_key(keys)
        ordered = [write, *(fk for fk in keys.fingerprint_keys if fk.version != write.version)]
        fingerprints = [(fk.version, fk.fingerprint(tenant, card.pan)) for fk in ordered]
        fp_keys = [self._store.fingerprint_key(tenant, v, fp) for v, fp in fingerprints]
        now = self._clock.now()
        for _ in range(_TOKENIZE_ATTEMPTS):
            fresh = self._stored(keys, tenant, new_token(), plaintext, fingerprints[0], card, now)
            outcome = await self._store.insert_new(fresh, fp_keys)
            if outcome.created:
                return TokenizeResult(_record(fresh), already_known=False)
            if outcome.existing_token is None:
                continue  # token collision: draw another
            # A known card: never rewritten (a repeated or hostile tokenize must not
            # replace someone's holder details); answer with what is stored.
            shown = outcome.existing
            if shown is None:
                shown = await self._store.load_display(tenant, outcome.existing_token)
            if shown is not None:
                return TokenizeResult(TokenRecord(tenant, outcome.existing_token, shown.display,
                                                  shown.create_time, shown.update_time),
                                      already_known=True)
            # The token was deleted meanwhile: start over with a new one.
        raise Aborted(TOKENIZE_CONFLICT, "the card changed concurrently; retry")

    async def _sealing_key(self, keys: KeySnapshot,
                           key_id: str) -> tuple[SealingKeyVersion, KeySnapshot]:
        entry = keys.sealing_key(key_id)
        if entry is None:
            # Another process may have rotated since this one last looked.
            keys = await self._keyring.refresh()
            entry = keys.sealing_key(key_id)
        now = self._clock.now()
        if entry is None:
            raise self._stale_key(SEALING_KEY_UNKNOWN, "is not known", keys, now)
        if not entry.usable(now):
            raise self._stale_key(SEALING_KEY_EXPIRED, "has expired", keys, now)
        return entry, keys

    @staticmethod
    def _stale_key(reason: str, what: str, keys: KeySnapshot, now: float) -> FailedPrecondition:
        # The current key ids let a client see at once that it must refetch the key set.
        current = ",".join(k.key_id for k in keys.usable_sealing_keys(now))
        return FailedPrecondition(reason, f"the sealing key {what}; fetch the current key set",
                                  metadata={"key_ids": current})

    def _open_sealed(self, sealing: SealingKeyVersion, tenant: str, sealed: bytes) -> CardSecret:
        try:
            card = card_from_bytes(sealing.key.open(sealed, tenant=tenant))
        except (DecryptionFailed, DecodeError):
            raise _unreadable() from None
        return validate_card(card, self._clock.now(), field=CIPHERTEXT_FIELD)

    @staticmethod
    def _stored(keys: KeySnapshot, tenant: str, token: str, plaintext: bytes,
                fingerprint: tuple[int, str], card: CardSecret, now: float) -> StoredRecord:
        envelope = keys.kek.seal(plaintext, tenant=tenant, token=token)
        return StoredRecord(tenant, token, envelope, fingerprint[1], fingerprint[0],
                            card.display(), now, now)

    # --- get / delete / detokenize ----------------------------------------------

    async def get(self, tenant: str, token: str) -> TokenRecord:
        """A token's display data; NOT_FOUND for a missing or other tenant's token."""
        check_tenant(tenant, field="name")
        check_token(token, field="name")
        shown = await self._store.load_display(tenant, token)
        if shown is None:
            raise _not_found()
        return TokenRecord(tenant, token, shown.display, shown.create_time, shown.update_time)

    async def delete(self, tenant: str, token: str, actor: Actor, *,
                     caller_tenant: str | None = None) -> None:
        """Delete a token and destroy its wrapped data key and ciphertext.

        Audit-before-act: the intent entry is written first (if it cannot be,
        nothing is deleted), then the delete, then its outcome entry.
        ``caller_tenant`` is the credential's tenant (None: the caller was
        already scoped to ``tenant``): another tenant's token answers the
        same NOT_FOUND as a missing one, is left alone, and is audited as
        TENANT_MISMATCH, so an attempt on another tenant's cards leaves a trace.
        """
        check_tenant(tenant, field="name")
        check_token(token, field="name")
        _check_actor(actor)
        if caller_tenant is not None and caller_tenant != tenant:
            shown = AuditTarget.of(tenant, token).unprivileged()
            await self._audit.append(self._entry(DELETE, shown.tenant, shown.token, actor,
                                                 TENANT_MISMATCH,
                                                 f"caller tenant {caller_tenant}"))
            raise _not_found()
        await self._audit.append(self._entry(DELETE, tenant, token, actor, RESULT_INTENT))
        deleted = await self._store.delete(tenant, token)
        result = RESULT_OK if deleted else TOKEN_NOT_FOUND
        await self._audit.append(self._entry(DELETE, tenant, token, actor, result))
        if not deleted:
            raise _not_found()

    async def detokenize(self, tenant: str, token: str, reason: str, actor: Actor, *,
                         caller_tenant: str | None = None) -> tuple[TokenRecord, CardSecret]:
        """The card in clear. Audited before anything is returned: if the audit
        write fails, the call fails.

        ``tenant`` and ``token`` are what the request named (checked here, so a
        malformed call is audited too); ``caller_tenant`` is the credential's
        tenant (None: the caller was already scoped to ``tenant``). Another
        tenant's token answers the same NOT_FOUND as a missing one, and is
        audited as TENANT_MISMATCH.
        """
        try:
            check_tenant(tenant, field="name")
            check_token(token, field="name")
            _check_actor(actor)
            _check_reason(reason)
            if caller_tenant is not None and caller_tenant != tenant:
                raise _not_found()
            stored, card = await self._open_record(tenant, token)
        except CardLinkError as error:
            await self._audit.append(self._refused_detokenize(tenant, token, reason, actor,
                                                              caller_tenant, error))
            raise
        await self._audit.append(self._entry(DETOKENIZE, tenant, token, actor, RESULT_OK, reason))
        return _record(stored), card

    async def detokenize_name(self, name: str, reason: str, actor: Actor, *,
                              caller_tenant: str) -> tuple[TokenRecord, CardSecret]:
        """``detokenize`` of a resource name as the request spelled it; a name
        that does not parse is refused (INVALID_ARGUMENT) and audited."""
        try:
            parsed = parse_token_name(name)
        except CardLinkError as error:
            await self._audit.append(self._refused_detokenize("", "", reason, actor, None,
                                                              error))
            raise
        return await self.detokenize(parsed.tenant, parsed.token, reason, actor,
                                     caller_tenant=caller_tenant)

    def _refused_detokenize(self, tenant: str, token: str, reason: str, actor: Actor,
                            caller_tenant: str | None, error: CardLinkError) -> AuditEntry:
        shown = AuditTarget.of(tenant, token, reason, actor.request_id)
        result, shown_reason = error.reason, shown.reason
        if error.reason == TOKEN_NOT_FOUND and caller_tenant not in (None, tenant):
            result = TENANT_MISMATCH
            shown_reason = f"caller tenant {caller_tenant}; {shown_reason}"
        return self._entry(DETOKENIZE, shown.tenant, shown.token,
                           Actor(actor.caller, shown.request_id), result, shown_reason)

    async def _open_record(self, tenant: str, token: str) -> tuple[StoredRecord, CardSecret]:
        stored = await self._store.load(tenant, token)
        if stored is None:
            raise _not_found()
        kek = await self._kek(stored.envelope.kek_version)
        try:
            plaintext = kek.open(stored.envelope, tenant=tenant, token=token)
            return stored, card_from_bytes(plaintext)
        except (DecryptionFailed, DecodeError):
            raise Internal(RECORD_UNREADABLE, "a token record does not open") from None

    async def _kek(self, version: int) -> Kek:
        keys = await self._keyring.snapshot()
        kek = keys.kek_version(version)
        if kek is None:
            # Written by a process that saw a newer keyring than this one.
            kek = (await self._keyring.refresh()).kek_version(version)
        if kek is None:
            raise Internal(RECORD_UNREADABLE, "a token record names an unknown key version")
        return kek

    def _entry(self, action: str, tenant: str, token: str, actor: Actor, result: str,
               reason: str = "") -> AuditEntry:
        return AuditEntry(action=action, caller=actor.caller, tenant=tenant, token=token,
                          result=result, time=self._clock.now(), reason=reason,
                          request_id=actor.request_id)
