"""The security team's operations on the vault's keys, each one audited.

Composes the key lifecycle (rotate, retire, destroy expired), the rewrap job,
the production unseal ceremonies and the audit log. Plain async Python: the
gRPC transport is ``vault.admin_servicer``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from common.clock import Clock
from common.errors import CardLinkError, FailedPrecondition, invalid_field
from vault.audit import (
    KEY_DESTROY,
    KEY_RETIRE,
    KEY_REWRAP,
    KEY_ROTATE,
    RESULT_INTENT,
    RESULT_OK,
    ROOT_INIT,
    ROOT_REKEY,
    ROOT_ROTATE,
    ROOT_UNSEAL,
    AuditEntry,
    AuditLog,
    Checkpoint,
    Verification,
)
from vault.crypto import custodian_fingerprint
from vault.keyring import EntryInfo, Keyring
from vault.lifecycle import KeyLifecycle, KeyringStatus
from vault.rewrap import Rewrapper, RewrapProgress
from vault.service import Actor
from vault.unseal import (
    REKEY,
    ROTATE_ROOT,
    CeremonyOutcome,
    SealedShare,
    SealState,
    ShamirRootKeys,
)

_log = logging.getLogger(__name__)

DEV_MODE = "DEV_MODE"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AdminStatus:
    keyring: KeyringStatus
    seal: SealState
    rewrap: RewrapProgress


class KeyAdminService:
    """Key administration; ``unsealer`` is None in development mode."""

    def __init__(self, *, keyring: Keyring, lifecycle: KeyLifecycle, rewrapper: Rewrapper,
                 audit: AuditLog, clock: Clock, unsealer: ShamirRootKeys | None) -> None:
        self._keyring = keyring
        self._lifecycle = lifecycle
        self._rewrapper = rewrapper
        self._audit = audit
        self._clock = clock
        self._unsealer = unsealer
        self._on_unseal: list[Callable[[], Awaitable[None]]] = []

    @property
    def mode(self) -> str:
        return "dev" if self._unsealer is None else "production"

    def on_unseal(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` after every Unseal call that leaves this process
        unsealed (a repeat included: it must be harmless to run again)."""
        self._on_unseal.append(callback)

    async def _audited(self, action: str, actor: Actor, detail: str,
                       operation: Callable[[], Awaitable[T]], *,
                       return_despite_audit: bool = False) -> T:
        """Audit-before-act: a durable intent entry first (if it cannot be
        written, nothing happens), then the operation, then its outcome.

        ``return_despite_audit``: the result must reach the caller even when
        the outcome entry cannot be written (new custodian shares exist only
        in this reply); the failure is logged and the intent entry stands.
        """
        await self._record(action, actor, RESULT_INTENT, detail)
        try:
            result = await operation()
        except CardLinkError as error:
            await self._record(action, actor, error.reason, detail)
            raise
        try:
            await self._record(action, actor, RESULT_OK, detail)
        except CardLinkError as error:
            if not return_despite_audit:
                raise
            _log.error("audit outcome entry for %s could not be written (%s); "
                       "the intent entry records the attempt", action, error.reason)
        return result

    async def _record(self, action: str, actor: Actor, result: str, detail: str) -> None:
        await self._audit.append(AuditEntry(action=action, caller=actor.caller, tenant="",
                                            token="", result=result, time=self._clock.now(),
                                            reason=detail, request_id=actor.request_id))

    # --- keys ----------------------------------------------------------------------

    async def status(self) -> AdminStatus:
        await self.destroy_expired()
        return AdminStatus(await self._lifecycle.status(), await self.seal_state(),
                           await self._rewrapper.progress())

    async def rotate(self, kind: str, actor: Actor) -> EntryInfo:
        info = await self._audited(KEY_ROTATE, actor, f"kind={kind}",
                                   lambda: self._lifecycle.rotate(kind))
        await self.destroy_expired()
        return info

    async def retire(self, kind: str, version: int, actor: Actor) -> EntryInfo:
        return await self._audited(KEY_RETIRE, actor, f"kind={kind} version={version}",
                                   lambda: self._lifecycle.retire(kind, version))

    async def destroy_expired(self) -> list[EntryInfo]:
        """Destroy sealing keys past their grace period (audited before and after)."""
        if self._keyring.sealed:
            return []
        due = await self._lifecycle.expired_sealing_keys()
        if not due:
            return []
        vault = Actor("vault")
        for info in due:
            await self._record(KEY_DESTROY, vault, RESULT_INTENT, _destroy_detail(info))
        destroyed = await self._lifecycle.destroy_expired(only=[i.version for i in due])
        for info in destroyed:
            await self._record(KEY_DESTROY, vault, RESULT_OK, _destroy_detail(info))
        return destroyed

    async def rewrap(self, batch_size: int, limit: int,
                     actor: Actor) -> AsyncIterator[RewrapProgress]:
        for name, value in (("batch_size", batch_size), ("limit", limit)):
            if value < 0:
                raise invalid_field(name, "0 (the default) or more", "REWRAP_OPTION_INVALID")
        await self._record(KEY_REWRAP, actor, RESULT_INTENT,
                           f"batch_size={batch_size} limit={limit}")
        last: RewrapProgress | None = None
        try:
            async for progress in self._rewrapper.run(batch_size, limit):
                last = progress
                yield progress
        except CardLinkError as error:
            await self._record(KEY_REWRAP, actor, error.reason, _rewrap_detail(last))
            raise
        await self._record(KEY_REWRAP, actor, RESULT_OK, _rewrap_detail(last))

    # --- root and seal -------------------------------------------------------------

    def _require_production(self) -> ShamirRootKeys:
        if self._unsealer is None:
            raise FailedPrecondition(DEV_MODE, "development mode has no custodian shares "
                                     "(set CARDLINK_VAULT_MODE=production)")
        return self._unsealer

    async def seal_state(self) -> SealState:
        if self._unsealer is None:
            return SealState(False, True, 0, 0, 0, 0)
        return await self._unsealer.state()

    async def init(self, threshold: int, count: int, custodian_keys: Sequence[bytes],
                   actor: Actor) -> tuple[tuple[SealedShare, ...], SealState]:
        """The n new shares come back sealed, each to its custodian's key."""
        unsealer = self._require_production()
        keys = tuple(custodian_keys)
        shares = await self._audited(ROOT_INIT, actor, _share_detail(threshold, count, keys),
                                     lambda: unsealer.init(threshold, count, keys),
                                     return_despite_audit=True)
        return shares, await unsealer.state()

    async def unseal(self, share: str, actor: Actor) -> SealState:
        unsealer = self._require_production()
        try:
            state = await self._audited(ROOT_UNSEAL, actor, "one share",
                                        lambda: unsealer.unseal(share))
            if not state.sealed:
                await self._audit.flush_backlog()
        finally:
            # Unsealed is unsealed even when an audit write after it failed
            # (the sealed period's entries stay queued for the next append):
            # the process must say it serves, and a retried Unseal, which
            # answers ALREADY_UNSEALED, must be able to say so too.
            if not unsealer.sealed:
                for callback in self._on_unseal:
                    await callback()
        return state

    async def rekey(self, share: str, threshold: int, count: int,
                    custodian_keys: Sequence[bytes], actor: Actor) -> CeremonyOutcome:
        unsealer = self._require_production()
        keys = tuple(custodian_keys)
        return await self._audited(ROOT_REKEY, actor, _share_detail(threshold, count, keys),
                                   lambda: unsealer.ceremony(REKEY, share, threshold, count,
                                                             keys),
                                   return_despite_audit=True)

    async def rotate_root(self, share: str, threshold: int, count: int,
                          custodian_keys: Sequence[bytes], actor: Actor) -> CeremonyOutcome:
        unsealer = self._require_production()
        keys = tuple(custodian_keys)
        return await self._audited(ROOT_ROTATE, actor, _share_detail(threshold, count, keys),
                                   lambda: unsealer.ceremony(ROTATE_ROOT, share, threshold,
                                                             count, keys),
                                   return_despite_audit=True)

    # --- audit -----------------------------------------------------------------------

    async def verify_audit(self, checkpoint: Checkpoint | None = None) -> Verification:
        return await self._audit.verify(checkpoint)

    def export_audit(self, start_seq: int) -> AsyncIterator[tuple[str, dict[str, str]]]:
        return self._audit.entries(start_seq)


def _share_detail(threshold: int, count: int, keys: Sequence[bytes]) -> str:
    """k, n and which custodian keys the new shares are sealed to (SHA-256 prefixes
    of the public keys: the audit log says who can open them)."""
    custodians = ",".join(custodian_fingerprint(key) for key in keys[:32])
    return f"threshold={threshold} shares={count} custodians={custodians or '-'}"


def _destroy_detail(info: EntryInfo) -> str:
    return f"kind={info.kind} version={info.version} key_id={info.key_id}"


def _rewrap_detail(progress: RewrapProgress | None) -> str:
    if progress is None:
        return "not started"
    return (f"done={progress.done} total={progress.total} complete={progress.complete} "
            f"kek={progress.target_kek_version} fp={progress.target_fingerprint_version}")
