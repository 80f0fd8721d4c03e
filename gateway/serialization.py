"""JSON codecs for answers kept by the idempotency store."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from gateway.idempotency import Codec
from gateway.models import Binding, BindingState, CardDisplay, Consent, CreditLine, CreditLineState


def _load_binding(data: Any) -> Binding:
    return Binding(
        **{
            **data,
            "state": BindingState(data["state"]),
            "card": CardDisplay(**data["card"]),
            "consent": Consent(**data["consent"]),
        }
    )


def binding_codec() -> Codec[Binding]:
    return Codec(dump=asdict, load=_load_binding)


def _load_line(data: Any) -> CreditLine:
    return CreditLine(**{**data, "state": CreditLineState(data["state"])})


def credit_line_codec() -> Codec[CreditLine]:
    return Codec(dump=asdict, load=_load_line)
