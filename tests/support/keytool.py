"""Running the key tool in a test, as the security team would."""

from __future__ import annotations

import os

from clients.keytool import main
from clients.keytool._cli import TOKEN_ENV


def with_token(token: str, argv: list[str]) -> int:
    """The tool's exit code for ``argv`` with ``token`` as its credential, given
    the way the tool takes one: in its environment (a copy of this process's)."""
    return main(argv, environ={**os.environ, TOKEN_ENV: token})
