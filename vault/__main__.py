"""`python -m vault`: serve the token vault; `python -m vault pins`: print its
key-set verification keys for partners to pin."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging

from common.clock import SystemClock
from common.logging import configure_logging
from common.server import install_uvloop, run_until_signal
from vault.app import connect_redis, start_vault
from vault.config import VaultConfig, VaultMode
from vault.service import VaultService

logger = logging.getLogger("cardlink.vault")


async def _serve(config: VaultConfig) -> None:
    vault = await start_vault(config)
    logger.info("vault listening on %s (port %d)%s", config.listen, vault.port,
                "; SEALED: custodians must unseal it (cardlink-keytool unseal)"
                if vault.service.keyring.sealed else "")
    try:
        await run_until_signal(vault.running.server, vault.running.health,
                               grace=config.grace_shutdown_s)
    finally:
        await vault.redis.aclose()


async def _pins(config: VaultConfig) -> None:
    if config.mode is VaultMode.PRODUCTION:
        raise SystemExit("production mode: read the signing public keys with "
                         "`cardlink-keytool status --json` from an unsealed vault")
    redis = connect_redis(config.redis_url)
    try:
        service = VaultService.create(redis, prefix=config.redis_prefix, clock=SystemClock(),
                                      dev_key_file=config.key_file)
        keys = await service.keyring.snapshot()
        pins = {
            entry.key.key_id: base64.b64encode(entry.key.public_key).decode()
            for entry in keys.signing_keys
        }
        print(json.dumps({"keys": pins}, indent=2))
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="cardlink-vault", description=__doc__)
    parser.add_argument("command", nargs="?", choices=["serve", "pins"], default="serve")
    args = parser.parse_args()
    config = VaultConfig.from_env()
    configure_logging(config.log_level, config.log_json)
    install_uvloop()
    asyncio.run(_pins(config) if args.command == "pins" else _serve(config))


if __name__ == "__main__":
    main()
