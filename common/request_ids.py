"""Request ids: a UUID4 in its canonical hyphenated spelling (AIP-155)."""

from __future__ import annotations

import uuid


def is_uuid4(value: str) -> bool:
    """True for a UUID4 written as ``str(uuid)`` gives it (any letter case);
    braces, URNs and unhyphenated forms are not canonical."""
    if len(value) != 36:
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value.lower()
