"""The bank's events as tests send them: each request in the bank's order."""

from __future__ import annotations

import itertools
import uuid

from cardlink.gateway.v1 import bank_events_pb2, resources_pb2

_sequences = itertools.count(1)


def next_event_sequence() -> int:
    """A sequence above every one handed out before: events sent in the bank's order."""
    return next(_sequences)


def _event_ids(request_id: str | None, sequence: int | None) -> tuple[str, int]:
    return (request_id or str(uuid.uuid4()),
            next_event_sequence() if sequence is None else sequence)


def limit_change(line: str, units_minor: int, currency_code: str = "EUR", *,
                 request_id: str | None = None,
                 sequence: int | None = None) -> bank_events_pb2.ChangeCreditLimitRequest:
    request_id, sequence = _event_ids(request_id, sequence)
    return bank_events_pb2.ChangeCreditLimitRequest(
        name=line, limit=resources_pb2.Money(currency_code=currency_code,
                                             units_minor=units_minor),
        request_id=request_id, event_sequence=sequence)


def freeze(line: str, reason: str = "RISK_REVIEW", *, request_id: str | None = None,
           sequence: int | None = None) -> bank_events_pb2.FreezeCreditLineRequest:
    request_id, sequence = _event_ids(request_id, sequence)
    return bank_events_pb2.FreezeCreditLineRequest(
        name=line, reason=reason, request_id=request_id, event_sequence=sequence)


def unfreeze(line: str, *, request_id: str | None = None,
             sequence: int | None = None) -> bank_events_pb2.UnfreezeCreditLineRequest:
    request_id, sequence = _event_ids(request_id, sequence)
    return bank_events_pb2.UnfreezeCreditLineRequest(
        name=line, request_id=request_id, event_sequence=sequence)


def close(line: str, reason: str = "ACCOUNT_CLOSED", *, request_id: str | None = None,
          sequence: int | None = None) -> bank_events_pb2.CloseCreditLineRequest:
    request_id, sequence = _event_ids(request_id, sequence)
    return bank_events_pb2.CloseCreditLineRequest(
        name=line, reason=reason, request_id=request_id, event_sequence=sequence)
