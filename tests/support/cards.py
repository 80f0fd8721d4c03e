"""Test cards: Luhn-valid PANs and identity elements that scans look for."""

from __future__ import annotations

from cardlink.vault.v1 import vault_pb2


def luhn_complete(body: str) -> str:
    """Append the check digit that makes ``body`` Luhn-valid."""
    total = 0
    for index, char in enumerate(reversed(body)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return body + str((10 - total % 10) % 10)


def card(pan: str = "4111111111111111", *, year: int = 2031, name: str = "Jane Doe",
         national_id: str = "ID98765432", phone: str = "+4915112345678") -> vault_pb2.CardSecret:
    return vault_pb2.CardSecret(pan=pan, expiry_month=12, expiry_year=year, holder_name=name,
                                national_id=national_id, phone=phone)


def numbered_card(n: int) -> vault_pb2.CardSecret:
    """A distinct Luhn-valid Visa card and identity per ``n``."""
    pan = luhn_complete(f"4{n:014d}")
    return card(pan, name=f"Holder Number{n}", national_id=f"NID{n:08d}",
                phone=f"+49151{n:08d}")
