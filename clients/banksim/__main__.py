"""`python -m clients.banksim`: serve the reference bank-core simulator."""

from __future__ import annotations

import asyncio
import logging

from clients.banksim.app import BanksimConfig, start_banksim
from common.logging import configure_logging
from common.server import install_uvloop, run_until_signal

logger = logging.getLogger("cardlink.banksim")


async def _serve(config: BanksimConfig) -> None:
    banksim = await start_banksim(config)
    logger.info("bank simulator listening on %s (port %d)", config.listen, banksim.port)
    try:
        await run_until_signal(banksim.running.server, banksim.running.health, grace=2.0)
    finally:
        await banksim.channel.close(None)


def main() -> None:
    config = BanksimConfig.from_env()
    configure_logging(config.log_level)
    install_uvloop()
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
