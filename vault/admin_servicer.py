"""gRPC transport for key administration: protos in, KeyAdminService calls, protos out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from cardlink.vault.v1 import admin_pb2, admin_pb2_grpc
from common.auth import current_principal
from common.errors import invalid_field
from vault.admin import KeyAdminService
from vault.audit import Checkpoint
from vault.keyring import FINGERPRINT, KEK, SEALING, SIGNING, EntryInfo
from vault.lifecycle import KEY_KIND_INVALID, VersionStatus
from vault.rewrap import RewrapProgress
from vault.service import Actor, check_request_id
from vault.unseal import CeremonyOutcome, SealedShare, SealState

Context = grpc.aio.ServicerContext[Any, Any]

KINDS: dict[int, str] = {
    admin_pb2.KEY_KIND_KEK: KEK,
    admin_pb2.KEY_KIND_FINGERPRINT: FINGERPRINT,
    admin_pb2.KEY_KIND_SEALING: SEALING,
    admin_pb2.KEY_KIND_SIGNING: SIGNING,
}
KIND_VALUES: dict[str, admin_pb2.KeyKind.ValueType] = {v: k for k, v in KINDS.items()}  # type: ignore[misc]


def _kind(value: int) -> str:
    if value not in KINDS:
        raise invalid_field("kind", "must be KEK, FINGERPRINT, SEALING or SIGNING",
                            KEY_KIND_INVALID)
    return KINDS[value]


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _actor(request_id: str = "") -> Actor:
    return Actor(caller=current_principal().subject, request_id=check_request_id(request_id))


def key_version(info: EntryInfo, *, current: bool = False, records: int = 0,
                public_key: bytes = b"", destroyed: bool = False) -> admin_pb2.KeyVersion:
    return admin_pb2.KeyVersion(
        kind=KIND_VALUES[info.kind], version=info.version, key_id=info.key_id, current=current,
        create_time=_timestamp(info.create_time), supersede_time=_timestamp(info.supersede_time),
        expire_time=_timestamp(info.expire_time), record_count=records, public_key=public_key,
        destroyed=destroyed,
    )


def seal_status(state: SealState, mode: str) -> admin_pb2.SealStatus:
    return admin_pb2.SealStatus(sealed=state.sealed, initialized=state.initialized,
                                threshold=state.threshold, share_count=state.count,
                                progress=state.progress, refused_shares=state.refused, mode=mode)


def rewrap_progress(p: RewrapProgress) -> admin_pb2.RewrapProgress:
    return admin_pb2.RewrapProgress(done=p.done, total=p.total, rate=p.rate,
                                    eta_seconds=p.eta_seconds, complete=p.complete,
                                    target_kek_version=p.target_kek_version,
                                    target_fingerprint_version=p.target_fingerprint_version,
                                    skipped=p.skipped)


def sealed_shares(shares: tuple[SealedShare, ...]) -> list[admin_pb2.SealedShare]:
    """The new shares as sealed; the deprecated clear ``shares`` field stays unset."""
    return [admin_pb2.SealedShare(custodian_public_key=s.custodian_public_key,
                                  ciphertext=s.ciphertext) for s in shares]


def ceremony(outcome: CeremonyOutcome) -> admin_pb2.RootCeremony:
    return admin_pb2.RootCeremony(progress=outcome.progress, threshold=outcome.threshold,
                                  complete=outcome.complete,
                                  sealed_shares=sealed_shares(outcome.shares),
                                  root_key_id=outcome.root_key_id)


class KeyAdminServicer(admin_pb2_grpc.KeyAdminServicer):
    """Adapts cardlink.vault.v1.KeyAdmin onto KeyAdminService."""

    def __init__(self, service: KeyAdminService, public_keys: Any) -> None:
        self._service = service
        # (kind, version) -> raw public key, for signing keys (pinning).
        self._public_keys = public_keys

    async def GetKeyStatus(self, request: admin_pb2.GetKeyStatusRequest,
                           context: Context) -> admin_pb2.KeyStatus:
        status = await self._service.status()
        public = await self._public_keys()
        return admin_pb2.KeyStatus(
            versions=[self._version(v, public) for v in status.keyring.versions],
            seal=seal_status(status.seal, self._service.mode),
            rewrap=rewrap_progress(status.rewrap), generation=status.keyring.generation)

    @staticmethod
    def _version(v: VersionStatus, public: dict[tuple[str, int], bytes]) -> admin_pb2.KeyVersion:
        return key_version(v.info, current=v.current, records=v.record_count,
                           public_key=public.get((v.info.kind, v.info.version), b""))

    async def RotateKey(self, request: admin_pb2.RotateKeyRequest,
                        context: Context) -> admin_pb2.KeyVersion:
        info = await self._service.rotate(_kind(request.kind), _actor(request.request_id))
        public = await self._public_keys()
        return key_version(info, current=True, public_key=public.get((info.kind, info.version),
                                                                       b""))

    async def RewrapRecords(self, request: admin_pb2.RewrapRecordsRequest,
                            context: Context) -> AsyncIterator[admin_pb2.RewrapProgress]:
        async for progress in self._service.rewrap(request.batch_size, request.limit,
                                                   _actor(request.request_id)):
            yield rewrap_progress(progress)

    async def RetireKeyVersion(self, request: admin_pb2.RetireKeyVersionRequest,
                               context: Context) -> admin_pb2.KeyVersion:
        info = await self._service.retire(_kind(request.kind), request.version,
                                          _actor(request.request_id))
        return key_version(info, destroyed=True)

    async def InitRoot(self, request: admin_pb2.InitRootRequest,
                       context: Context) -> admin_pb2.InitRootResponse:
        shares, state = await self._service.init(request.threshold, request.share_count,
                                                 request.custodian_public_keys, _actor())
        return admin_pb2.InitRootResponse(sealed_shares=sealed_shares(shares),
                                          seal=seal_status(state, self._service.mode))

    async def GetSealStatus(self, request: admin_pb2.GetSealStatusRequest,
                            context: Context) -> admin_pb2.SealStatus:
        return seal_status(await self._service.seal_state(), self._service.mode)

    async def Unseal(self, request: admin_pb2.UnsealRequest,
                     context: Context) -> admin_pb2.SealStatus:
        state = await self._service.unseal(request.share, _actor())
        return seal_status(state, self._service.mode)

    async def RekeyRoot(self, request: admin_pb2.RekeyRootRequest,
                        context: Context) -> admin_pb2.RootCeremony:
        return ceremony(await self._service.rekey(request.share, request.threshold,
                                                  request.share_count,
                                                  request.custodian_public_keys, _actor()))

    async def RotateRoot(self, request: admin_pb2.RotateRootRequest,
                         context: Context) -> admin_pb2.RootCeremony:
        return ceremony(await self._service.rotate_root(request.share, request.threshold,
                                                        request.share_count,
                                                        request.custodian_public_keys,
                                                        _actor()))

    async def VerifyAudit(self, request: admin_pb2.VerifyAuditRequest,
                          context: Context) -> admin_pb2.AuditVerification:
        checkpoint = (Checkpoint(request.checkpoint.seq, request.checkpoint.mac)
                      if request.HasField("checkpoint") else None)
        v = await self._service.verify_audit(checkpoint)
        return admin_pb2.AuditVerification(ok=v.ok, verified=v.verified, problem=v.problem,
                                           entry_id=v.entry_id, expected_seq=v.expected_seq,
                                           head_seq=v.head_seq, head_mac=v.head_mac)

    async def ExportAudit(self, request: admin_pb2.ExportAuditRequest,
                          context: Context) -> AsyncIterator[admin_pb2.AuditRecord]:
        async for entry_id, fields in self._service.export_audit(request.start_seq):
            yield admin_pb2.AuditRecord(entry_id=entry_id, fields=fields)
