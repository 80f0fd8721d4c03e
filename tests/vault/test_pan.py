"""PAN checks, brands, masking, expiry and token formats."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import InvalidArgument
from vault import pan as pan_mod
from vault import tokens
from vault.pan import CardBrand, CardSecret, card_brand, luhn_valid, pan_valid

NOW = datetime(2027, 6, 15, tzinfo=UTC).timestamp()


def with_check_digit(body: str) -> str:
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable")


@pytest.mark.parametrize(
    "pan",
    ["4111111111111111", "5555555555554444", "378282246310005", "6011111111111117",
     "3530111333300000", "4222222222222", "6200000000000005", "4111111111111111110"],
)
def test_known_valid_pans(pan: str) -> None:
    assert pan_valid(pan)


@pytest.mark.parametrize(
    "pan",
    ["4111111111111112", "41111111111", "41111111111111111111", "", "4111 1111 1111 1111",
     "411111111111111a", "٤١١١١١١١١١١١١١١١", "-4111111111111111"],
)
def test_invalid_pans(pan: str) -> None:
    assert not pan_valid(pan)


@given(st.text(alphabet="0123456789", min_size=11, max_size=18))
def test_luhn_one_check_digit_fits(body: str) -> None:
    good = with_check_digit(body)
    assert pan_valid(good)
    bad = body + str((int(good[-1]) + 1) % 10)
    assert not pan_valid(bad)


@pytest.mark.parametrize(
    ("pan", "brand"),
    [
        ("4111111111111111", CardBrand.VISA),
        ("5555555555554444", CardBrand.MASTERCARD),
        ("2223000048400011", CardBrand.MASTERCARD),
        ("378282246310005", CardBrand.AMEX),
        ("6011111111111117", CardBrand.DISCOVER),
        ("6445644564456445", CardBrand.DISCOVER),
        ("6221260000000000", CardBrand.DISCOVER),
        ("3530111333300000", CardBrand.JCB),
        ("6200000000000005", CardBrand.UNIONPAY),
        ("36227206271667", CardBrand.DINERS),
        ("30569309025904", CardBrand.DINERS),
        ("6759649826438453", CardBrand.MAESTRO),
        ("2200123456789010", CardBrand.MIR),
        ("9999999999999995", CardBrand.UNSPECIFIED),
    ],
)
def test_brand_from_iin(pan: str, brand: CardBrand) -> None:
    assert card_brand(pan) is brand


def _brand_by_scanning_ranges(pan: str) -> CardBrand:
    # The IIN table read the slow, obvious way: longest prefix width first.
    for width in (6, 4, 3, 2, 1):
        for low, high, brand in pan_mod._IIN_RANGES:
            if len(str(low)) == width and len(pan) >= width and low <= int(pan[:width]) <= high:
                return brand
    return CardBrand.UNSPECIFIED


@given(st.text(alphabet="0123456789", min_size=12, max_size=19))
def test_brand_lookup_matches_the_iin_ranges(pan: str) -> None:
    assert card_brand(pan) is _brand_by_scanning_ranges(pan)


def test_brand_lookup_matches_the_iin_ranges_for_every_short_prefix() -> None:
    for width in range(1, 5):
        for prefix in range(10 ** width):
            pan = f"{prefix:0{width}d}".ljust(16, "0")
            assert card_brand(pan) is _brand_by_scanning_ranges(pan), pan


def test_brand_lookup_at_and_just_outside_every_range() -> None:
    for low, high, _ in pan_mod._IIN_RANGES:
        for prefix in (low - 1, low, high, high + 1):
            pan = str(prefix).ljust(16, "0")
            assert card_brand(pan) is _brand_by_scanning_ranges(pan), pan


def test_iin_ranges_of_one_width_never_overlap() -> None:
    # The prefix table keeps one brand per prefix: an overlap would lose one.
    covered = sum(high - low + 1 for low, high, _ in pan_mod._IIN_RANGES)
    assert len(pan_mod._BRAND_BY_PREFIX) == covered


@pytest.mark.parametrize("text", ["", "4111 1111", "411a", "٤١١١", "-41"])
def test_luhn_refuses_what_is_not_ascii_digits(text: str) -> None:
    assert not luhn_valid(text)


def test_masking() -> None:
    assert pan_mod.mask_holder_name("John Doe") == "J*** D**"
    assert pan_mod.mask_holder_name("  Ana   María  de la O ") == "A** M**** d* l* O"
    assert pan_mod.mask_phone("+14155551234") == "*******1234"


def card(**changes: object) -> CardSecret:
    base: dict[str, object] = dict(pan="4111111111111111", expiry_month=12, expiry_year=2030,
                                   holder_name="John Doe", national_id="AB123456",
                                   phone="+14155551234")
    base.update(changes)
    return CardSecret(**base)  # type: ignore[arg-type]


def test_display_shows_only_bin_last_four_and_masks() -> None:
    shown = card().display()
    assert (shown.bin, shown.last_four, shown.brand) == ("411111", "1111", CardBrand.VISA)
    assert (shown.masked_holder_name, shown.masked_phone) == ("J*** D**", "*******1234")


@pytest.mark.parametrize(("pan", "shown_bin"), [
    ("4111111111111111", "411111"), ("4111111111111111111", "411111"),
    ("378282246310005", "37828"), ("501800000009", "50"), ("6304000000000000", "630400"),
])
def test_display_hides_at_least_six_digits_of_short_pans(pan: str, shown_bin: str) -> None:
    shown = card(pan=pan).display()
    assert shown.bin == shown_bin and shown.last_four == pan[-4:]
    assert len(pan) - len(shown.bin) - len(shown.last_four) >= 6
    assert shown_bin in repr(card(pan=pan)) and pan[:len(shown_bin) + 1] not in repr(card(pan=pan))


def test_card_secret_repr_hides_pan_and_identity() -> None:
    secret = card(pan="4000056655665556")
    for text in (repr(secret), str(secret), f"{secret}"):
        assert "4000056655665556" not in text
        assert "John" not in text
        assert "AB123456" not in text
        assert "4155551234" not in text


@pytest.mark.parametrize(
    ("month", "year", "reason"),
    [
        (5, 2027, "CARD_EXPIRED"),
        (12, 2026, "CARD_EXPIRED"),
        (0, 2030, "EXPIRY_INVALID"),
        (13, 2030, "EXPIRY_INVALID"),
        (1, 30, "EXPIRY_INVALID"),
        (1, 2099, "EXPIRY_INVALID"),
    ],
)
def test_bad_expiry(month: int, year: int, reason: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        pan_mod.validate_card(card(expiry_month=month, expiry_year=year), NOW, field="f")
    assert caught.value.reason == reason


def test_expiry_month_itself_is_still_valid() -> None:
    assert pan_mod.validate_card(card(expiry_month=6, expiry_year=2027), NOW, field="f")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"pan": "4111111111111112"}, "PAN_INVALID"),
        ({"holder_name": ""}, "HOLDER_NAME_INVALID"),
        ({"holder_name": "x" * 101}, "HOLDER_NAME_INVALID"),
        ({"holder_name": "John\nDoe"}, "HOLDER_NAME_INVALID"),
        ({"national_id": "A" * 33}, "NATIONAL_ID_INVALID"),
        ({"national_id": ""}, "NATIONAL_ID_INVALID"),
        ({"phone": "4155551234"}, "PHONE_INVALID"),
        ({"phone": "+1415555123456789"}, "PHONE_INVALID"),
    ],
)
def test_bad_fields_name_the_rule_never_the_value(changes: dict[str, object], reason: str) -> None:
    bad = card(**changes)
    with pytest.raises(InvalidArgument) as caught:
        pan_mod.validate_card(bad, NOW, field="sealed_card.ciphertext")
    error = caught.value
    assert error.reason == reason
    assert [v.field for v in error.violations] == ["sealed_card.ciphertext"]
    value = str(next(iter(changes.values())))
    texts = [error.message, str(error), repr(error), *(v.description for v in error.violations)]
    if len(value) > 3:
        assert all(value not in text for text in texts)


def test_every_violation_reported_at_once() -> None:
    bad = card(pan="1234", phone="x", national_id="")
    with pytest.raises(InvalidArgument) as caught:
        pan_mod.validate_card(bad, NOW, field="sealed_card.ciphertext")
    reasons = [v.reason for v in caught.value.violations]
    assert reasons == ["PAN_INVALID", "NATIONAL_ID_INVALID", "PHONE_INVALID"]
    assert caught.value.violations[0].description.startswith("card.pan")


# --- tokens -----------------------------------------------------------------------


def test_new_tokens_are_well_formed_random_and_not_numeric() -> None:
    seen = {tokens.new_token() for _ in range(1000)}
    assert len(seen) == 1000
    for token in seen:
        assert tokens.is_token(token)
        assert token.startswith("ctk_")
        assert len(token) == 30
        assert not token.isdigit()
        assert not pan_valid(token)


@given(st.binary(min_size=16, max_size=16))
def test_token_encoding_is_rfc4648_base32(raw: bytes) -> None:
    assert tokens.base32_lower(raw) == base64.b32encode(raw).decode().rstrip("=").lower()


@pytest.mark.parametrize(
    "bad",
    ["", "ctk_", "ctk_" + "a" * 25, "ctk_" + "a" * 27, "CTK_" + "a" * 26, "ctk_" + "A" * 26,
     "ctk_" + "1" * 26, "ctk_" + "a" * 25 + "b", "tok_" + "a" * 26],
)
def test_malformed_tokens(bad: str) -> None:
    assert not tokens.is_token(bad)


def test_parse_token_name() -> None:
    token = tokens.new_token()
    name = tokens.parse_token_name(f"tenants/acme-1/tokens/{token}")
    assert (name.tenant, name.token) == ("acme-1", token)
    assert str(name) == f"tenants/acme-1/tokens/{token}"
    assert tokens.parse_parent("tenants/acme") == "acme"


@pytest.mark.parametrize(
    "bad",
    ["", "tenants/acme", "tenants//tokens/x", "tenants/Acme/tokens/{t}", "tenants/-a/tokens/{t}",
     "tenants/acme/tokens/{t}/x", "/tenants/acme/tokens/{t}", "tenants/acme/tokens/ctk_x",
     "tenants/" + "a" * 64 + "/tokens/{t}", "tenants/acme/cards/{t}"],
)
def test_malformed_token_names(bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        tokens.parse_token_name(bad.replace("{t}", tokens.new_token()))
    assert caught.value.reason == "TOKEN_NAME_INVALID"
    assert caught.value.violations[0].field == "name"


@pytest.mark.parametrize("bad", ["", "tenants/", "tenants/A", "tenant/acme", "tenants/acme/x"])
def test_malformed_parent(bad: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        tokens.parse_parent(bad)
    assert caught.value.reason == "TENANT_INVALID"
