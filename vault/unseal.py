"""Production root key: split knowledge and dual control with SLIP-39 shares.

The root key never touches disk in clear. ``init`` generates it, writes the
keyring wrapped under it, and splits it with ``shamir_mnemonic`` (SLIP-39,
Shamir secret sharing over GF(256) with a digest and an RS1024 checksum per
share) into n custodian shares, any k of which rebuild it. The vault keeps
only the share set's public facts in the keyring hash: its SLIP-39
identifier, k, n, and the root key id (a keyed hash of the root, so a
rebuilt root can be checked without storing anything secret).

A vault process starts sealed and holds the root only in memory once k
custodians have each submitted a share. A share that does not parse, comes
from another set, repeats one already given, or combines into anything but
this vault's root is refused, counted in Redis, and (for a bad combination)
clears the partial progress so a bad share cannot poison a later attempt.

No caller ever holds another custodian's share in clear (PCI DSS 3.7.6):
init, rekey and root rotation take one X25519 public key per new share and
seal each share to its custodian's key (HPKE, ``vault.crypto``) in this
process before replying; the clear mnemonics are never logged, stored or
put in an error, and are dropped with the reply.

Rekey (new shares, same root) and root rotation (new root, keyring rewrapped)
are ceremonies of their own that also need k shares of the current set.
Shares in progress live in this process's memory, so every custodian of one
ceremony talks to the same process.

A ceremony's keyring change carries a fresh marker. When its reply is lost
(Redis dropped the connection after the write, or the reload that follows
failed), the process reads the marker back: a change that landed still hands
out its sealed shares, at once or, if Redis cannot tell yet, to the next
ceremony or status call. Dropping them would leave the keyring under a root
(or share set) nobody holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn

from redis.asyncio import Redis
from shamir_mnemonic import MnemonicError, Share, combine_mnemonics, generate_mnemonics

from common.errors import (
    AlreadyExists,
    CardLinkError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    invalid_field,
)
from common.store_errors import redis_errors
from vault.crypto import (
    CUSTODIAN_KEY_SIZE,
    RootKey,
    custodian_key_usable,
    new_symmetric_key,
    seal_custodian_share,
)
from vault.keyring import (
    GENERATION_FIELD,
    ROOT_FIELD,
    Keyring,
    parse_entry_field,
    read_fields,
    rewrap_entry,
)

VAULT_SEALED = "VAULT_SEALED"
VAULT_NOT_INITIALIZED = "VAULT_NOT_INITIALIZED"
VAULT_INITIALIZED = "VAULT_INITIALIZED"
SHARE_INVALID = "SHARE_INVALID"
SHARE_WRONG_SET = "SHARE_WRONG_SET"
SHARE_DUPLICATE = "SHARE_DUPLICATE"
SHARE_MISMATCH = "SHARE_MISMATCH"
CEREMONY_MISMATCH = "CEREMONY_MISMATCH"
SHARE_PARAMETERS_INVALID = "SHARE_PARAMETERS_INVALID"
ALREADY_UNSEALED = "ALREADY_UNSEALED"
KEYRING_BUSY = "KEYRING_BUSY"
CUSTODIAN_KEYS_INVALID = "CUSTODIAN_KEYS_INVALID"
CUSTODIAN_KEYS_FIELD = "custodian_public_keys"

SHARES_ID_FIELD = "shares:id"
SHARES_THRESHOLD_FIELD = "shares:threshold"
SHARES_COUNT_FIELD = "shares:count"
# The identifiers of the sets a rekey replaced under the current root: their
# shares still rebuild it, and only the identifier tells them apart.
SHARES_REPLACED_FIELD = "shares:replaced"
CEREMONY_FIELD = "ceremony"  # the marker of the last completed rekey or root rotation
MAX_SHARES = 16  # SLIP-39's limit per group

UNSEAL = "unseal"
REKEY = "rekey"
ROTATE_ROOT = "rotate_root"


@dataclass(frozen=True, slots=True)
class ShareSet:
    """The public facts of the current custodian share set."""

    identifier: int
    threshold: int
    count: int
    root_key_id: str
    replaced: frozenset[int] = frozenset()  # earlier sets of the same root

    @property
    def taken(self) -> frozenset[int]:
        """Identifiers a new set of the same root must not reuse."""
        return self.replaced | {self.identifier}


@dataclass(frozen=True, slots=True)
class SealState:
    sealed: bool
    initialized: bool
    threshold: int
    count: int
    progress: int
    refused: int


@dataclass(frozen=True, slots=True)
class SealedShare:
    """One new share, HPKE-sealed to its custodian's X25519 public key."""

    custodian_public_key: bytes
    ciphertext: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class CeremonyOutcome:
    """A rekey or root rotation: progress, and the new sealed shares once complete."""

    progress: int
    threshold: int
    complete: bool
    shares: tuple[SealedShare, ...] = field(default=(), repr=False)
    root_key_id: str = ""


@dataclass(slots=True)
class _Ceremony:
    kind: str
    new_threshold: int
    new_count: int
    custodian_keys: tuple[bytes, ...] = ()
    shares: list[str] = field(default_factory=list, repr=False)
    indexes: set[tuple[int, int]] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Asked:
    """What a ceremony call asked for, and the share set its shares came from."""

    kind: str
    threshold: int
    count: int
    custodian_keys: tuple[bytes, ...]
    share_set: int | None  # None: the share given does not parse


@dataclass(frozen=True, slots=True)
class _CeremonyWrite:
    """A ceremony's keyring write: what was asked, what it hands out, the root
    before and after, and the marker the write carries (set once it is sent)."""

    marker: str
    asked: _Asked
    outcome: CeremonyOutcome
    old_root: RootKey
    new_root: RootKey
    new_share_set: int


@dataclass(frozen=True, slots=True)
class _Landed:
    """A ceremony that landed, kept for its retries: what was asked and what it
    hands out, never a root key (the old one above all must not outlive it)."""

    asked: _Asked
    outcome: CeremonyOutcome
    new_share_set: int

    @classmethod
    def of(cls, ceremony: _CeremonyWrite) -> _Landed:
        return cls(ceremony.asked, ceremony.outcome, ceremony.new_share_set)


@dataclass(frozen=True, slots=True)
class _InitWrite:
    """The last init: what was asked, the root and share set it wrote, its shares."""

    asked: tuple[int, int, tuple[bytes, ...]]  # threshold, count, custodian keys
    root_key_id: str
    share_set: int
    shares: tuple[SealedShare, ...]


def _share_set_of(mnemonic: str) -> int | None:
    try:
        return int(Share.from_mnemonic(mnemonic.strip()).identifier)
    except (MnemonicError, ValueError):
        return None


def check_share_parameters(threshold: int, count: int) -> None:
    if not 1 <= threshold <= count <= MAX_SHARES:
        rule = f"need 1 <= threshold <= share_count <= {MAX_SHARES}"
        raise InvalidArgument(SHARE_PARAMETERS_INVALID, rule, violations=[
            FieldViolation(name, rule, SHARE_PARAMETERS_INVALID)
            for name in ("threshold", "share_count")])
    if threshold == 1 and count > 1:
        # SLIP-39 refuses it: n copies of the secret itself, no split knowledge.
        raise invalid_field("threshold", "1 allows one share only", SHARE_PARAMETERS_INVALID)


def check_custodian_keys(keys: Sequence[bytes], count: int) -> tuple[bytes, ...]:
    """One distinct, usable raw X25519 public key per share, or INVALID_ARGUMENT."""
    violations: list[FieldViolation] = []
    if len(keys) != count:
        # Alone: one violation per key of a long list would outgrow the reply's metadata.
        raise InvalidArgument(CUSTODIAN_KEYS_INVALID, "custodian_public_keys: give one key "
                              "per share", violations=[FieldViolation(
                                  CUSTODIAN_KEYS_FIELD, f"need exactly share_count ({count}) "
                                  f"keys, one per custodian; got {len(keys)}",
                                  CUSTODIAN_KEYS_INVALID)])
    seen: set[bytes] = set()
    for index, key in enumerate(keys):
        where = f"{CUSTODIAN_KEYS_FIELD}[{index}]"
        if len(key) != CUSTODIAN_KEY_SIZE:
            problem = f"not a raw {CUSTODIAN_KEY_SIZE}-byte X25519 public key"
        elif key in seen:
            problem = "repeats an earlier key; each custodian needs a key of their own"
        elif not custodian_key_usable(key):
            problem = "not a usable X25519 public key"
        else:
            seen.add(key)
            continue
        violations.append(FieldViolation(where, problem, CUSTODIAN_KEYS_INVALID))
    if violations:
        raise InvalidArgument(CUSTODIAN_KEYS_INVALID,
                              "custodian_public_keys: give one distinct 32-byte X25519 public "
                              "key per share", violations=violations)
    return tuple(keys)


def seal_shares(mnemonics: Sequence[str], keys: Sequence[bytes]) -> tuple[SealedShare, ...]:
    """Share i sealed to key i; only the custodian's private key opens it."""
    return tuple(SealedShare(key, seal_custodian_share(key, mnemonic.encode()))
                 for mnemonic, key in zip(mnemonics, keys, strict=True))


def split_root(root: bytes, threshold: int, count: int) -> tuple[list[str], int]:
    """(mnemonics, SLIP-39 identifier) of a fresh k-of-n split of ``root``."""
    check_share_parameters(threshold, count)
    mnemonics = generate_mnemonics(1, [(threshold, count)], root)[0]
    return mnemonics, Share.from_mnemonic(mnemonics[0]).identifier


def _share_set_fields(identifier: int, threshold: int, count: int) -> dict[str, str]:
    return {SHARES_ID_FIELD: str(identifier), SHARES_THRESHOLD_FIELD: str(threshold),
            SHARES_COUNT_FIELD: str(count)}


class ShamirRootKeys:
    """A RootKeyProvider fed by custodian shares; sealed until k are in."""

    def __init__(self, redis: Redis, *, prefix: str, keys_key: str) -> None:
        self._redis = redis
        self._keys_key = keys_key
        self._counter_key = f"{prefix}:vault:unseal"
        self._root: RootKey | None = None
        self._ceremony: _Ceremony | None = None
        self._unsettled: _CeremonyWrite | None = None  # its reply was lost
        self._undelivered: _Landed | None = None  # the last ceremony that landed
        self._initialized: _InitWrite | None = None  # for a retry of the last init
        self._keyring: Keyring | None = None

    def attach(self, keyring: Keyring) -> None:
        """The keyring this provider feeds (for init and root rotation)."""
        self._keyring = keyring

    # --- RootKeyProvider ---------------------------------------------------------

    @property
    def sealed(self) -> bool:
        return self._root is None

    async def root_key(self) -> RootKey:
        if self._root is None:
            raise FailedPrecondition(VAULT_SEALED, "the vault is sealed; custodians must unseal it")
        return self._root

    def seal(self) -> None:
        self._root = None
        self._ceremony = None
        # Only an unsealed process hands shares out; unsealing starts afresh.
        self._unsettled = self._undelivered = None
        if self._keyring is not None:
            self._keyring.invalidate()

    # --- state ---------------------------------------------------------------------

    async def share_set(self) -> ShareSet | None:
        fields = await read_fields(self._redis, self._keys_key)
        if SHARES_ID_FIELD not in fields or ROOT_FIELD not in fields:
            return None
        replaced = fields.get(SHARES_REPLACED_FIELD, "")
        return ShareSet(int(fields[SHARES_ID_FIELD]), int(fields[SHARES_THRESHOLD_FIELD]),
                        int(fields[SHARES_COUNT_FIELD]), fields[ROOT_FIELD],
                        frozenset(int(i) for i in replaced.split(",") if i))

    async def state(self) -> SealState:
        await self._settle()
        shares = await self.share_set()
        with redis_errors():
            refused = int(await self._redis.hget(self._counter_key, "refused") or 0)
        progress = len(self._ceremony.shares) if self._ceremony else 0
        if shares is None:
            return SealState(self.sealed, False, 0, 0, progress, refused)
        return SealState(self.sealed, True, shares.threshold, shares.count, progress, refused)

    # --- init ------------------------------------------------------------------------

    async def init(self, threshold: int, count: int,
                   custodian_keys: Sequence[bytes]) -> tuple[SealedShare, ...]:
        """Generate the root and the keyring; return the n shares, each sealed to
        its custodian's key. Stays sealed."""
        check_share_parameters(threshold, count)
        keys = check_custodian_keys(custodian_keys, count)
        if self._keyring is None:
            raise RuntimeError("attach a keyring first")
        current = await self.share_set()
        kept = self._initialized
        if current is not None and kept is not None and (
                kept.asked, kept.root_key_id, kept.share_set) == (
                (threshold, count, keys), current.root_key_id, current.identifier):
            return kept.shares  # a retry: the first reply was lost, or its files not written
        if current is not None:
            raise AlreadyExists(VAULT_INITIALIZED, "the vault is initialized already")
        secret = new_symmetric_key()
        mnemonics, identifier = split_root(secret, threshold, count)
        sealed = seal_shares(mnemonics, keys)
        del mnemonics
        root = RootKey(secret)
        # Kept (sealed to the custodians, nothing else) before the write: if its
        # reply is lost, a retry of this request gets the same shares.
        self._initialized = _InitWrite((threshold, count, keys), root.key_id, identifier, sealed)
        created = await self._keyring.create(root,
                                             _share_set_fields(identifier, threshold, count))
        if not created:
            raise AlreadyExists(VAULT_INITIALIZED, "the vault is initialized already")
        return sealed

    # --- share submission ------------------------------------------------------------

    async def unseal(self, mnemonic: str) -> SealState:
        if not self.sealed:
            raise FailedPrecondition(ALREADY_UNSEALED, "this vault process is unsealed already")
        secret = await self._submit(UNSEAL, mnemonic, 0, 0)
        if secret is not None:
            self._root = RootKey(secret)
            if self._keyring is not None:
                self._keyring.invalidate()
        return await self.state()

    async def ceremony(self, kind: str, mnemonic: str, threshold: int, count: int,
                       custodian_keys: Sequence[bytes]) -> CeremonyOutcome:
        """One share toward a rekey (same root) or a root rotation (new root).
        Every call of one ceremony names the same custodian keys, in order."""
        check_share_parameters(threshold, count)
        keys = check_custodian_keys(custodian_keys, count)
        await self.root_key()  # only an unsealed process runs ceremonies
        landed = await self._landed(_Asked(kind, threshold, count, keys, _share_set_of(mnemonic)))
        if landed is not None:  # a retry of a ceremony whose reply was lost
            return landed
        shares = await self._require_share_set()
        secret = await self._submit(kind, mnemonic, threshold, count, keys)
        if secret is None:
            progress = len(self._ceremony.shares) if self._ceremony else 0
            return CeremonyOutcome(progress, shares.threshold, False)
        old = RootKey(secret)
        # Rekey: new shares of the same root. Rotation: a new root, keyring rewrapped.
        new_secret = secret if kind == REKEY else new_symmetric_key()
        new = old if kind == REKEY else RootKey(new_secret)
        mnemonics, identifier = split_root(new_secret, threshold, count)
        # Shares are told apart by their set's 15-bit identifier: a rekey (same
        # root) that drew one of an earlier set would bring that set back.
        taken = shares.taken if kind == REKEY else frozenset()
        while identifier in taken:
            mnemonics, identifier = split_root(new_secret, threshold, count)
        replaced = ",".join(str(i) for i in sorted(taken))
        outcome = CeremonyOutcome(shares.threshold, shares.threshold, True,
                                  seal_shares(mnemonics, keys), new.key_id)
        del mnemonics

        def changes(fields: Mapping[str, str]) -> dict[str, str]:
            if (fields.get(ROOT_FIELD), fields.get(SHARES_ID_FIELD)) != (
                    old.key_id, str(shares.identifier)):
                # Another process rotated or rekeyed meanwhile: these shares are stale.
                raise FailedPrecondition(CEREMONY_MISMATCH, "the root key or share set "
                                         "changed during the ceremony; start it again")
            rewrapped = {} if new is old else {
                f: rewrap_entry(old, new, f, v) for f, v in fields.items()
                if parse_entry_field(f) is not None}
            return {**rewrapped, ROOT_FIELD: new.key_id, SHARES_REPLACED_FIELD: replaced,
                    **_share_set_fields(identifier, threshold, count)}

        asked = _Asked(kind, threshold, count, keys, shares.identifier)
        return await self._commit(changes, _CeremonyWrite("", asked, outcome, old, new, identifier))

    async def _commit(self, changes: Callable[[Mapping[str, str]], dict[str, str]],
                      ceremony: _CeremonyWrite) -> CeremonyOutcome:
        assert self._keyring is not None
        marker = secrets.token_hex(16)
        for _ in range(8):
            fields = await read_fields(self._redis, self._keys_key)
            change = {**changes(fields), CEREMONY_FIELD: marker}
            self._root = ceremony.new_root  # the refresh inside change() opens the new keyring
            try:
                changed = await self._keyring.change(fields[GENERATION_FIELD], change)
            except BaseException as error:
                # Landed or not? If Redis cannot tell now (or the call was
                # cancelled), the next ceremony or status call settles it.
                self._unsettled = replace(ceremony, marker=marker)
                if not isinstance(error, CardLinkError):
                    raise
                landed = await self._landed(ceremony.asked)
                if landed is None:
                    raise
                return landed
            if changed:
                # Kept for retries too: this reply can be lost on its way (a
                # dropped connection, a tool that cannot write the share files).
                self._undelivered = _Landed.of(ceremony)
                self._initialized = None  # its shares belong to a replaced set now
                return ceremony.outcome
            self._root = ceremony.old_root
        raise FailedPrecondition(KEYRING_BUSY, "the keyring kept changing; retry the ceremony")

    async def _settle(self) -> None:
        """Whether a ceremony whose reply was lost landed: then this process holds
        the new root and keeps the outcome for the ceremony's retries; else the old
        root, and the change is fenced off so that it never lands late."""
        unsettled = self._unsettled
        if unsettled is None or self._keyring is None:
            return
        landed = await self._keyring.landed(CEREMONY_FIELD, unsettled.marker)
        if self._unsettled is not unsettled:
            return  # a concurrent call settled it (or a seal forgot it) meanwhile
        self._unsettled = None
        if self._root is unsettled.new_root:  # not sealed or unsealed again meanwhile
            self._root = unsettled.new_root if landed else unsettled.old_root
        if landed:
            self._undelivered = _Landed.of(unsettled)
        self._keyring.invalidate()

    async def _landed(self, asked: _Asked) -> CeremonyOutcome | None:
        """The shares of the last ceremony that landed, for its retries only: the
        same request, with a share of the set it replaced (its reply may have been
        lost). They stay until another ceremony lands: they open only with the
        custodians' keys, and a reply that is lost again must not lose them."""
        await self._settle()
        landed = self._undelivered
        if landed is None or landed.asked != asked:
            return None
        current = await self.share_set()
        if current is None or (current.identifier, current.root_key_id) != (
                landed.new_share_set, landed.outcome.root_key_id):
            return None  # another ceremony (here or in another process) replaced it
        return landed.outcome

    async def _require_share_set(self) -> ShareSet:
        shares = await self.share_set()
        if shares is None:
            raise FailedPrecondition(VAULT_NOT_INITIALIZED, "the vault is not initialized; init")
        return shares

    async def _submit(self, kind: str, mnemonic: str, threshold: int, count: int,
                      keys: tuple[bytes, ...] = ()) -> bytes | None:
        """Take one share; the rebuilt root secret once k valid shares are in, else None."""
        shares = await self._require_share_set()
        ceremony = self._ceremony
        if ceremony is not None and ceremony.kind != kind and ceremony.shares:
            await self._refuse(CEREMONY_MISMATCH, f"a {ceremony.kind} ceremony is under "
                               "way; finish it or restart the vault process")
        if ceremony is None or ceremony.kind != kind or not ceremony.shares:
            ceremony = self._ceremony = _Ceremony(kind, threshold, count, keys)
        if (ceremony.new_threshold, ceremony.new_count, ceremony.custodian_keys) != (
                threshold, count, keys):
            await self._refuse(CEREMONY_MISMATCH, "every custodian must ask for the same "
                               "threshold, share count and custodian keys (in order)")
        try:
            share = Share.from_mnemonic(mnemonic.strip())
        except (MnemonicError, ValueError):
            await self._refuse(SHARE_INVALID, "the share does not parse (typo or corruption)")
        if share.identifier != shares.identifier:
            await self._refuse(SHARE_WRONG_SET, "the share belongs to another share set")
        position = (share.group_index, share.index)
        if position in ceremony.indexes:
            await self._refuse(SHARE_DUPLICATE, "this share was submitted already")
        ceremony.shares.append(mnemonic.strip())
        ceremony.indexes.add(position)
        if len(ceremony.shares) < shares.threshold:
            return None
        self._ceremony = None  # whatever happens next, start the next attempt afresh
        try:
            secret = bytes(combine_mnemonics(ceremony.shares))
        except (MnemonicError, ValueError):
            secret = b""
        if len(secret) != 32 or RootKey(secret).key_id != shares.root_key_id:
            await self._refuse(SHARE_MISMATCH, "the shares do not rebuild this vault's root "
                               "key; progress was reset, start again")
        return secret

    async def _refuse(self, reason: str, message: str) -> NoReturn:
        with redis_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(self._counter_key, "refused", 1)
                pipe.hincrby(self._counter_key, reason, 1)
                await pipe.execute()
        raise FailedPrecondition(reason, message)
