"""Protobuf <-> domain conversion for the gateway's partner and bank-facing APIs."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from cardlink.gateway.v1 import resources_pb2 as pb
from cardlink.vault.v1 import vault_pb2
from common.errors import invalid_field
from gateway.models import Binding, BindingState, CardDisplay, Consent, CreditLine, Money

_BINDING_STATES = {
    BindingState.PENDING_VERIFICATION: pb.Binding.STATE_PENDING_VERIFICATION,
    BindingState.PENDING_CODE: pb.Binding.STATE_PENDING_CODE,
    BindingState.ACTIVE: pb.Binding.STATE_ACTIVE,
    BindingState.UNBOUND: pb.Binding.STATE_UNBOUND,
    BindingState.FAILED: pb.Binding.STATE_FAILED,
}


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def seconds(ts: Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


def consent_from_proto(consent: pb.Consent) -> Consent:
    accept = 0.0
    if consent.HasField("accept_time"):
        try:
            accept = seconds(consent.accept_time)
        except ValueError:  # outside what a Timestamp may hold (years 1 to 9999)
            raise invalid_field("consent.accept_time", "not a valid timestamp",
                                "CONSENT_INVALID") from None
    return Consent(consent.terms_id, consent.terms_version, accept, consent.channel)


def money_from_proto(money: pb.Money, field: str) -> Money:
    return Money.parse(money.currency_code, money.units_minor, field)


def _display(card: CardDisplay) -> vault_pb2.CardDisplay:
    return vault_pb2.CardDisplay(
        bin=card.bin,
        last_four=card.last_four,
        brand=card.brand,  # type: ignore[arg-type]  # the vault's enum number, kept as is
        expiry_month=card.expiry_month,
        expiry_year=card.expiry_year,
        masked_holder_name=card.masked_holder_name,
        masked_phone=card.masked_phone,
    )


def binding_to_proto(binding: Binding) -> pb.Binding:
    c = binding.consent
    message = pb.Binding(
        name=binding.name,
        card=_display(binding.card),
        state=_BINDING_STATES[binding.state],
        failure_reason=binding.failure_reason,
        consent=pb.Consent(
            terms_id=c.terms_id, terms_version=c.terms_version,
            accept_time=timestamp(c.accept_time), channel=c.channel,
        ),
        code_attempts_left=binding.code_attempts_left,
        create_time=timestamp(binding.create_time),
        update_time=timestamp(binding.update_time),
    )
    if binding.code_expire_time is not None:
        message.code_expire_time.CopyFrom(timestamp(binding.code_expire_time))
    return message


def _money(currency: str, units: int) -> pb.Money:
    return pb.Money(currency_code=currency, units_minor=units)


def credit_line_to_proto(line: CreditLine) -> pb.CreditLine:
    message = pb.CreditLine(
        name=line.name,
        binding=line.binding,
        state=pb.CreditLine.State.Value(f"STATE_{line.state.value}"),
        tier=line.tier,
        decline_reason=line.decline_reason,
        create_time=timestamp(line.create_time),
        update_time=timestamp(line.update_time),
    )
    if line.currency_code:  # amounts exist once the bank has approved
        cur = line.currency_code
        message.limit.CopyFrom(_money(cur, line.limit))
        message.available.CopyFrom(_money(cur, line.available))
        message.held.CopyFrom(_money(cur, line.held))
        message.outstanding.CopyFrom(_money(cur, line.outstanding))
    return message
