"""Card binding: pending verification -> pending code -> active -> unbound, or failed.

The gateway never sees the card: the partner's sealed bytes go to the vault,
which returns a token. The bank verifies the holder (it detokenizes itself)
and sends a one-time code; the gateway counts attempts, enforces expiry and
lockouts, and records the user's consent.

A bank that is down or slow leaves the binding in PENDING_VERIFICATION and
raises UNAVAILABLE; calling again - with the same request id, or a new one for
the same card - resumes with the same bank idempotency key, so the bank
verifies and sends a code once.

A code check is recorded on the binding (bank key + code HMAC) before the bank
sees it and counts an attempt at once. Only a bank that provably did nothing
(unreachable after the connector's retries, or an INTERNAL answer, for a
check this call started) or judged no code (EXPIRED) gets the attempt back;
after a timeout the check stays pending, and the next confirm of the same
code - any request id - resumes it with the same bank key, while
another code waits for it (bounded) and then gets ABORTED CODE_CHECK_PENDING.
The card claim is released only for a binding that left its live states
(by the call whose script made the transition, or by a later confirm that
answers CODE_EXPIRED or TOO_MANY_ATTEMPTS for it again: each release is a
compare-and-set on that binding's own claim value).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from typing import NoReturn

from common.clock import Clock
from common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
    invalid_field,
)
from gateway.binding_store import (
    BindingStore,
    NewBinding,
    StoredBinding,
    claim_value,
    parse_claim,
)
from gateway.idempotency import Codec, IdempotencyStore, fingerprint
from gateway.models import LIVE_BINDING_STATES, Binding, BindingState, Consent
from gateway.names import ChildName, UserName, binding_name, derived_id, parse_user
from gateway.ports import Bank, CodeResult, TokenizedCard, Vault
from gateway.serialization import binding_codec
from gateway.thresholds import TenantThresholds

logger = logging.getLogger("cardlink.gateway.binding")

# A card claim younger than this is never taken over, even with no live
# binding yet: it covers the moment between claiming a card and creating the
# binding record (two slots, two scripts).
CLAIM_GRACE_S = 60.0
MAX_CIPHERTEXT = 4096
# How far a partner's clock may run ahead of ours when it stamps a consent.
CONSENT_CLOCK_SKEW_S = 300.0
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 100
_CODE_RE = re.compile(r"[0-9]{4,8}")
_TEXT_LIMITS = {"terms_id": 64, "terms_version": 32, "channel": 32}
_POLL_S = 0.02


def _bank_did_nothing(error: Unavailable) -> bool:
    """UNAVAILABLE after the connector's retries (never reached the bank), or an
    INTERNAL answer (the bank contract: an error answer did no work under the key).
    A timeout or any other status is an unknown outcome."""
    return (error.metadata.get("cause") == "unreachable"
            or error.metadata.get("status") == "INTERNAL")


@dataclass(frozen=True)
class SealedCardInput:
    key_id: str
    ciphertext: bytes


def bank_key(kind: str, *parts: str) -> str:
    """An idempotency key for the bank (<= 128 chars, no resource names leaked)."""
    return f"{kind}-" + hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def validate_consent(consent: Consent, now: float) -> None:
    violations = [
        FieldViolation(f"consent.{field}", f"1 to {limit} characters", "CONSENT_INVALID")
        for field, limit in _TEXT_LIMITS.items()
        if not 1 <= len(getattr(consent, field)) <= limit
    ]
    if consent.accept_time <= 0:
        violations.append(FieldViolation("consent.accept_time", "required", "CONSENT_INVALID"))
    elif consent.accept_time > now + CONSENT_CLOCK_SKEW_S:
        violations.append(FieldViolation("consent.accept_time", "not in the future",
                                         "CONSENT_INVALID"))
    if violations:
        raise InvalidArgument("CONSENT_INVALID", "the consent record is incomplete",
                              violations=violations)


class BindingService:
    def __init__(
        self,
        store: BindingStore,
        idempotency: IdempotencyStore,
        vault: Vault,
        bank: Bank,
        thresholds: TenantThresholds,
        clock: Clock,
        fingerprint_secret: bytes,
        bank_budget_s: float = 5.0,
    ) -> None:
        """``fingerprint_secret`` keys the HMAC of one-time codes (idempotency
        fingerprint, pending check); ``bank_budget_s`` bounds one bank call with
        its retries (how long a check may be on the wire)."""
        if not fingerprint_secret:
            raise ValueError("the code fingerprint secret must not be empty")
        self._secret = fingerprint_secret
        self._bank_budget_s = bank_budget_s
        self._store = store
        self._idem = idempotency
        self._vault = vault
        self._bank = bank
        self._thresholds = thresholds
        self._clock = clock
        self._codec: Codec[Binding] = binding_codec()

    # --- create ----------------------------------------------------------

    async def create(
        self, user: UserName, sealed: SealedCardInput, consent: Consent, request_id: str
    ) -> Binding:
        validate_consent(consent, self._clock.now())
        if not sealed.key_id or not 1 <= len(sealed.ciphertext) <= MAX_CIPHERTEXT:
            raise invalid_field("sealed_card", "key_id and 1-4096 bytes of ciphertext",
                                "SEALED_CARD_INVALID")
        card = await self._vault.tokenize(user.tenant, sealed.key_id, sealed.ciphertext,
                                          request_id)
        # The fingerprint names the token, not the ciphertext: sealing is
        # randomized, so a partner that re-seals the same card for a retry
        # is still sending the same request.
        digest = fingerprint(str(user), card.token_name, asdict(consent))
        return await self._idem.run(
            user.tenant, "CreateBinding", request_id, digest,
            lambda: self._create(user, card, consent, request_id), self._codec,
        )

    async def _create(
        self, user: UserName, card: TokenizedCard, consent: Consent, request_id: str
    ) -> Binding:
        limits = self._thresholds.for_tenant(user.tenant)
        now = self._clock.now()
        claim, replaced = await self._claim_card(user, card.token, now)
        name = binding_name(user, derived_id("bnd", str(user), request_id))
        new = NewBinding(name, card.token, card.token_name, card.display, consent,
                         limits.code_max_attempts, claim)
        status, value = await self._store.create(new, now, limits.max_bindings_per_user)
        if status in ("LOCKED", "LIMIT"):
            # No binding holds the claim just made: put back the one it replaced,
            # which a concurrent create of this user's may hold ('' if none).
            await self._store.compare_and_set_owner(user.tenant, card.token, claim, replaced)
        if status == "LOCKED":
            raise ResourceExhausted(
                "BINDING_LOCKED_OUT",
                "too many wrong codes for this card; binding it is locked for a while",
                metadata={"retry_after_s": str(max(1, int(float(value) - now)))},
            )
        if status == "LIMIT":
            raise ResourceExhausted(
                "BINDINGS_PER_USER_EXCEEDED", "the user has the most bindings allowed",
                metadata={"limit": str(limits.max_bindings_per_user)},
            )
        name = ChildName(user, "bindings", value)
        if status == "CREATED" and not await self._store.count_card_attempt(
            user.tenant, card.token, limits.max_card_attempts,
            int(now // limits.card_attempts_window_s), limits.card_attempts_window_s,
        ):
            # Counted only now: the claim succeeded and verification is next.
            if await self._store.retire(name, now, BindingState.FAILED,
                                        "CARD_ATTEMPTS_EXCEEDED",
                                        [BindingState.PENDING_VERIFICATION]):
                await self._store.compare_and_set_owner(user.tenant, card.token, claim, "")
            raise ResourceExhausted(
                "CARD_ATTEMPTS_EXCEEDED", "too many binding attempts for this card"
            )
        stored = await self._store.load(user, value, now)
        if stored is None:  # pragma: no cover - the script just created or found it
            raise NotFound("BINDING_NOT_FOUND", "binding not found")
        if status == "EXISTS" and stored.claim != claim:
            # Our claim refreshed the card's owner value; give it back the one
            # the existing binding holds, or unbinding it could not release the card.
            await self._store.compare_and_set_owner(user.tenant, card.token, claim, stored.claim)
        if stored.binding.state is BindingState.PENDING_VERIFICATION:
            return await self._verify(name, stored)
        return stored.binding

    async def _claim_card(self, user: UserName, token: str, now: float) -> tuple[str, str]:
        """(our claim, the claim value it replaced: this user's own, or '')."""
        for _ in range(3):
            mine = claim_value(user, now)
            status, owner = await self._store.claim_card(user.tenant, token, mine)
            if status == "OK":
                return mine, owner
            if not await self._is_stale(owner, token, now):
                # Never say which user: that would leak another user's identity.
                raise FailedPrecondition(
                    "CARD_BOUND_TO_OTHER_USER", "this card is bound to another user"
                )
            if await self._store.compare_and_set_owner(user.tenant, token, owner, mine):
                return mine, ""  # a stale claim of another user's: nothing to put back
        raise FailedPrecondition("CARD_BOUND_TO_OTHER_USER", "this card is bound to another user")

    async def _is_stale(self, owner: str, token: str, now: float) -> bool:
        owner_user, claimed_at = parse_claim(owner)
        if now < claimed_at + CLAIM_GRACE_S:
            return False
        live = await self._store.live_for_card(parse_user(owner_user), token, now)
        return live is None or live.binding.state not in LIVE_BINDING_STATES

    async def _verify(self, name: ChildName, stored: StoredBinding) -> Binding:
        # Keyed by the binding, not the request: a resume with a new request
        # id for the same card must not make the bank verify twice either.
        result = await self._bank.verify_holder(
            stored.token_name, str(name.parent), bank_key("verify", str(name))
        )
        now = self._clock.now()
        if result.code_sent:
            ttl = self._thresholds.for_tenant(name.tenant).code_ttl_s
            await self._store.code_sent(name, now, result.verification_id, now + ttl)
        elif await self._store.retire(
            name, now, BindingState.FAILED, "HOLDER_VERIFICATION_DECLINED",
            [BindingState.PENDING_VERIFICATION],
        ):
            await self._release_card(name, stored.claim)
            logger.info("binding %s declined by the bank: %s", name, result.decline_reason)
        return await self._get(name)

    async def _release_card(self, name: ChildName, claim: str) -> None:
        token = (await self._require(name)).token_name.rsplit("/", 1)[-1]
        await self._store.compare_and_set_owner(name.tenant, token, claim, "")

    # --- confirm ---------------------------------------------------------

    def _code_digest(self, name: ChildName, code: str) -> str:
        """HMAC of a one-time code under the deployment secret: what Redis keeps
        (fingerprint, pending check) cannot be brute-forced back to the code."""
        message = f"{name}\x00{code}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    async def confirm(self, name: ChildName, code: str, request_id: str) -> Binding:
        if not _CODE_RE.fullmatch(code):
            raise invalid_field("code", "4 to 8 digits", "CODE_INVALID")
        code_digest = self._code_digest(name, code)
        return await self._idem.run(
            name.tenant, "ConfirmBinding", request_id, fingerprint(str(name), code_digest),
            lambda: self._confirm(name, code, code_digest, request_id), self._codec,
        )

    async def _reserve(self, name: ChildName, code_digest: str,
                       request_id: str) -> tuple[str, str, str]:
        limits = self._thresholds.for_tenant(name.tenant)
        # The attempt counter outlives the code, even under a shorter lockout:
        # else the code's attempts would start over while it is still valid.
        counter_s = max(limits.lockout_s, limits.code_ttl_s)
        in_flight_ms = int((self._bank_budget_s + 1.0) * 1000)
        give_up = time.monotonic() + self._bank_budget_s + 1.0
        while True:
            status, value, verification_id = await self._store.reserve_attempt(
                name, self._clock.now(), code_digest, bank_key("code", str(name), request_id),
                counter_s * 1000, in_flight_ms,
            )
            if status != "BUSY":
                return status, value, verification_id
            # Another code's check is pending: wait while it is on the wire.
            if value != "1" or time.monotonic() >= give_up:
                raise Aborted(
                    "CODE_CHECK_PENDING",
                    "an earlier code's check has no answer yet; send that code again "
                    "or retry later",
                )
            await asyncio.sleep(_POLL_S)

    async def _confirm(self, name: ChildName, code: str, code_digest: str,
                       request_id: str) -> Binding:
        stored = await self._require(name)
        # The verification id comes with the reservation: a verification may
        # have ended since the read above (for a code the bank had texted).
        status, value, verification_id = await self._reserve(name, code_digest, request_id)
        if status == "NOT_FOUND":
            raise _not_found()
        if status == "EXPIRED":
            await self._expired(name, stored.claim)
        if status == "STATE":
            return await self._not_pending(name, value)
        if status == "EXHAUSTED":
            raise ResourceExhausted("TOO_MANY_ATTEMPTS", "no code attempts are left")
        if status == "MISMATCHED":  # this request's check ended so already
            raise _code_mismatch(attempts_left=value)
        if status == "LOCKED":  # as MISMATCHED, on the last attempt
            await self._locked_out(name, stored.claim)
        key = value  # OK or RESUME: the bank key of the check
        try:
            result = await self._bank.check_code(
                name.tenant, verification_id, code, key
            )
        except Unavailable as error:
            # Only a check this call started: a resumed one was on the wire before.
            if status == "OK" and _bank_did_nothing(error):
                await self._store.refund_attempt(name, self._clock.now(), key)
            else:
                # Unknown outcome: the bank may have checked (and consumed) the
                # code. The attempt stays counted and the check pending.
                await self._store.check_unknown(name, self._clock.now(), key)
            raise
        except BaseException:
            await self._store.check_unknown(name, self._clock.now(), key)
            raise
        return await self._settle_code(name, stored, result, key)

    async def _expired(self, name: ChildName, claim: str) -> NoReturn:
        # The code expired, now or before this call (a rerun, or an expiry a
        # sweep found first, which released nothing): releasing the card is
        # safe to repeat, and frees it now rather than once a takeover finds
        # the claim stale.
        await self._release_card(name, claim)
        raise FailedPrecondition("CODE_EXPIRED", "the one-time code has expired")

    async def _not_pending(self, name: ChildName, state: str) -> Binding:
        if state == BindingState.ACTIVE.value:
            return await self._get(name)
        raise FailedPrecondition("BINDING_NOT_PENDING_CODE", "the binding awaits no code",
                                 metadata={"state": state})

    async def _settle_code(self, name: ChildName, stored: StoredBinding,
                           result: CodeResult, key: str) -> Binding:
        now = self._clock.now()
        if result is CodeResult.MATCH:
            status, state = await self._store.code_matched(name, now)
            if status == "EXPIRED":  # the bank's answer came after the code expired
                await self._expired(name, stored.claim)
            if status == "STATE":
                return await self._not_pending(name, state)
            return await self._get(name)
        if result is CodeResult.EXPIRED:
            # The bank judged no code: the attempt is given back before the
            # binding fails (else a third one, so spent, locked the card out).
            await self._store.refund_attempt(name, now, key)
            if await self._store.retire(name, now, BindingState.FAILED, "CODE_EXPIRED",
                                        [BindingState.PENDING_CODE]):
                await self._release_card(name, stored.claim)
            elif (await self._get(name)).state is BindingState.ACTIVE:
                # The code was used up by a concurrent right answer.
                return await self._get(name)
            raise FailedPrecondition("CODE_EXPIRED", "the one-time code has expired")
        lockout = self._thresholds.for_tenant(name.tenant).lockout_s
        status, left = await self._store.code_mismatched(name, now, key, now + lockout,
                                                         lockout * 1000)
        if status == "EXPIRED":  # the bank's answer came after the code expired
            await self._expired(name, stored.claim)
        if status == "STATE":
            return await self._not_pending(name, left)
        if status == "LEFT":
            raise _code_mismatch(attempts_left=left)
        await self._locked_out(name, stored.claim)

    async def _locked_out(self, name: ChildName, claim: str) -> NoReturn:
        # The last wrong code failed the binding; releasing its card is safe
        # to repeat (a rerun of the same request does it again).
        await self._release_card(name, claim)
        raise ResourceExhausted(
            "TOO_MANY_ATTEMPTS", "too many wrong codes; the binding failed",
            metadata={"retry_after_s": str(self._thresholds.for_tenant(name.tenant).lockout_s)},
        )

    # --- reads and unbind ------------------------------------------------

    async def get(self, name: ChildName) -> Binding:
        return await self._get(name)

    async def _get(self, name: ChildName) -> Binding:
        return (await self._require(name)).binding

    async def _require(self, name: ChildName) -> StoredBinding:
        stored = await self._store.load(name.parent, name.id, self._clock.now())
        if stored is None:
            raise _not_found()
        return stored

    async def active_card(self, name: ChildName) -> str:
        """The vault token name of an ACTIVE binding (for credit), else FAILED_PRECONDITION."""
        stored = await self._require(name)
        if stored.binding.state is not BindingState.ACTIVE:
            raise FailedPrecondition("BINDING_NOT_ACTIVE", "the binding is not active",
                                     metadata={"state": stored.binding.state.value})
        return stored.token_name

    async def list(
        self, user: UserName, page_size: int, page_token: str
    ) -> tuple[list[Binding], str]:
        if page_size < 0:
            raise invalid_field("page_size", "must not be negative", "PAGE_SIZE_INVALID")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        before = _read_page_token(page_token, user) if page_token else None
        rows = await self._store.page(user, before, size + 1, self._clock.now())
        more = len(rows) > size
        rows = rows[:size]
        token = _page_token(user, rows[-1].seq) if more else ""
        return [r.binding for r in rows], token

    async def unbind(self, name: ChildName, request_id: str) -> Binding:
        return await self._idem.run(
            name.tenant, "UnbindBinding", request_id, fingerprint(str(name)),
            lambda: self._unbind(name), self._codec,
        )

    async def _unbind(self, name: ChildName) -> Binding:
        stored = await self._require(name)
        status, state = await self._store.unbind(name, self._clock.now())
        if status == "NOT_FOUND":
            raise _not_found()
        if status == "STATE":
            raise FailedPrecondition("BINDING_NOT_BOUND", "the binding failed; nothing to unbind",
                                     metadata={"state": state})
        if status == "IN_USE":
            raise FailedPrecondition("BINDING_IN_USE", "an open credit line is repaid from it")
        if status == "DONE":  # this call unbound it (not an already-unbound repeat)
            await self._release_card(name, stored.claim)
        return await self._get(name)


def _code_mismatch(*, attempts_left: str) -> InvalidArgument:
    return InvalidArgument(
        "CODE_MISMATCH", "the one-time code is wrong",
        metadata={"attempts_left": attempts_left},
        violations=[FieldViolation("code", "wrong code", "CODE_MISMATCH")],
    )


def _not_found() -> NotFound:
    return NotFound("BINDING_NOT_FOUND", "binding not found")


def _page_token(user: UserName, seq: int) -> str:
    raw = json.dumps({"p": str(user), "s": seq}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _read_page_token(token: str, user: UserName) -> int:
    try:
        document = json.loads(base64.urlsafe_b64decode(token.encode()))
        if document["p"] == str(user) and type(document["s"]) is int:
            return int(document["s"])
    except (ValueError, KeyError, TypeError, RecursionError):  # deep nesting: a crafted token
        pass
    raise invalid_field("page_token", "not from a previous call with this parent",
                        "PAGE_TOKEN_INVALID")
