"""Structured logging with a PAN-redaction safety net.

Domain code never logs a card number; the filter here is the second line of
defence: any run of 12-19 digits (optionally split by up to three spaces,
dashes, dots, slashes or underscores, as card numbers are written) is masked
in the message, its args and the final formatted line (tracebacks included)
before anything is written. Some other dotted numbers with as many digits (an
IPv4 address of four three-digit parts, an epoch time with milliseconds) are
masked too: a safety net errs on the side of the card.
"""

from __future__ import annotations

import json as _json
import logging
import re
import sys
import time
import unicodedata
from typing import Any, TextIO

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "KeyValueFormatter",
    "RedactingFilter",
    "configure_logging",
    "count_digits",
    "mask_digits",
    "redact",
    "scrub_card_numbers",
]

REDACTED = "[REDACTED]"

# Between two digits of a card number as people write it: up to three of
# space, dash, dot, slash, underscore ("4111 - 1111", "4111.1111", "4111/1111").
_SEPARATOR = r"[\s./_-]{0,3}"
# 12-19 digits so separated, not touching other digits (so a longer number
# is masked whole, not left partly visible).
_DIGIT_RUN = re.compile(rf"(?<![0-9])[0-9](?:{_SEPARATOR}[0-9]){{11,18}}(?![0-9])")
# A longer run still hides a PAN inside; mask every digit run of 12 or more.
_LONG_RUN = re.compile(rf"[0-9](?:{_SEPARATOR}[0-9]){{19,}}")

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


# For text that is kept for good (audit entries): 12 or more digits with
# anything but ASCII letters between them, however much ("4111,1111",
# "4111:1111", a blank-looking filler or a Roman numeral between groups).
# Stricter than _DIGIT_RUN, which keeps log lines with addresses legible.
_KEPT_DIGIT_RUN = re.compile(r"[0-9](?:[^A-Za-z0-9]*[0-9]){11,}")


def _digits_of(char: str) -> str:
    """What a reader takes a non-ASCII character for: its digit(s) if it shows
    any (wide, superscript, circled "11", other scripts' digits), else a space
    (a separator, even when NFKC would make it an ASCII letter)."""
    digit = unicodedata.digit(char, None)
    if digit is not None:
        return str(digit)
    shown = "".join(str(d) for c in unicodedata.normalize("NFKC", char)
                    if (d := unicodedata.digit(c, None)) is not None)
    return shown or " "


def _shown_digits(char: str) -> str:
    """The digits a reader sees in one character ('' for none)."""
    if char.isascii():
        return char if char.isdigit() else ""
    return _digits_of(char).strip()


def count_digits(text: str) -> int:
    """How many digits a reader sees in ``text`` (circled 11 shows two)."""
    return sum(len(_shown_digits(c)) for c in text)


def mask_digits(text: str) -> str:
    """``text`` with every character that shows a digit, of any script, as ``#``."""
    return "".join("#" if _shown_digits(c) else c for c in text)


def scrub_card_numbers(text: str) -> str:
    """``text`` with every run that could spell a card number, however it is
    written, masked as ``[REDACTED]``; the text itself when there is none."""
    if text.isascii():
        plain, origin = text, None
    else:
        pieces = [c if c.isascii() else _digits_of(c) for c in text]
        plain = "".join(pieces)
        origin = [i for i, piece in enumerate(pieces) for _ in piece] + [len(text)]
    parts, last = [], 0
    for match in _KEPT_DIGIT_RUN.finditer(plain):
        start, end = match.span()
        if origin is not None:  # back to the characters of ``text``
            start, end = origin[start], origin[end - 1] + 1
        parts += [text[last:start], REDACTED]
        last = end
    return "".join([*parts, text[last:]]) if parts else text


def redact(text: str) -> str:
    """``text`` with every card-number-like digit run masked."""
    return _DIGIT_RUN.sub(REDACTED, _LONG_RUN.sub(REDACTED, text))


class RedactingFilter(logging.Filter):
    """Masks digit runs in a record's message and args (attach to handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Merge args first: a PAN could be split between the format string
        # and an argument, or hide in an object's str().
        record.msg = redact(_message(record))
        record.args = None
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):
        # A bad format call must not raise into the caller; keep the pieces.
        return f"{record.msg} {record.args!r}"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _fields(formatter: logging.Formatter, record: logging.LogRecord) -> dict[str, Any]:
    """What every line carries: ts, level, logger, msg, the extras, and exc if any."""
    fields: dict[str, Any] = {
        "ts": _timestamp(record),
        "level": record.levelname,
        "logger": record.name,
        "msg": record.getMessage(),
        **_extras(record),
    }
    if record.exc_info:
        fields["exc"] = formatter.formatException(record.exc_info)
    return fields


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=INFO logger=cardlink.vault msg="..." key=value`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(self, record)
        return redact(" ".join(f"{k}={_kv_value(v)}" for k, v in fields.items()))


def _kv_value(value: Any) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return _json.dumps(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(_json.dumps(_fields(self, record), default=str))


def configure_logging(
    level: int | str = logging.INFO, json: bool = False, *, stream: TextIO | None = None
) -> logging.Handler:
    """Send all logs to ``stream`` (stderr) through the redaction filter; returns the handler.

    Replaces handlers already on the root logger, so calling it twice is safe.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json else KeyValueFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
