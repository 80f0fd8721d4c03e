"""cardlink-keytool: the security team's key tool, a client of the vault's KeyAdmin API.

Subcommands: status, rotate, rewrap, retire, init, unseal, rekey, audit
verify, audit export, keygen, keygen-custodian. See ``cardlink-keytool --help`` and the README's
Operations section; exit codes are listed in ``clients.keytool._exit``.
"""

from clients.keytool._cli import main

__all__ = ["main"]
