"""Human or JSON output, errors on stderr, and the rewrap progress bar."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def as_dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)


class Output:
    def __init__(self, *, json_mode: bool, stdout: TextIO | None = None,
                 stderr: TextIO | None = None) -> None:
        self.json_mode = json_mode
        self._out = stdout or sys.stdout
        self._err = stderr or sys.stderr

    def result(self, document: dict[str, Any], human: str) -> None:
        """The command's answer: a JSON document, or text for a person."""
        if self.json_mode:
            print(json.dumps(document, sort_keys=True), file=self._out)
        else:
            print(human, file=self._out)

    def info(self, text: str) -> None:
        if not self.json_mode:
            print(text, file=self._out)

    def warning(self, text: str) -> None:
        if self.json_mode:
            print(json.dumps({"warning": text}, sort_keys=True), file=self._err)
        else:
            print(f"warning: {text}", file=self._err)

    def error(self, text: str, **fields: Any) -> None:
        if self.json_mode:
            print(json.dumps({"error": text, **fields}, sort_keys=True), file=self._err)
        else:
            print(f"error: {text}", file=self._err)

    def progress(self, done: int, total: int, rate: float, eta: float) -> None:
        """One redrawn line on stderr (only for a person at a terminal)."""
        if self.json_mode:
            return
        width = 30
        filled = width if total <= 0 else min(width, int(width * done / total))
        percent = 100.0 if total <= 0 else 100.0 * done / total
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                f"{percent:5.1f}%  {rate:,.0f} rec/s  ETA {_duration(eta)}")
        print(line, end="", file=self._err, flush=True)

    def end_progress(self) -> None:
        if not self.json_mode:
            print(file=self._err)


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
