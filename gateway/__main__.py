"""`python -m gateway`: serve the partner gateway (settings: gateway/config.py)."""

from __future__ import annotations

import asyncio
import logging

from common.logging import configure_logging
from common.server import install_uvloop, run_until_signal
from gateway.app import start_gateway
from gateway.config import GatewayConfig

logger = logging.getLogger("cardlink.gateway")


async def _serve(config: GatewayConfig) -> None:
    gateway = await start_gateway(config)
    logger.info("gateway listening on %s (port %d)", config.listen, gateway.port)
    try:
        await run_until_signal(gateway.running.server, gateway.running.health,
                               grace=config.grace_shutdown_s)
    finally:
        for channel in gateway.channels:
            await channel.close(None)
        await gateway.redis.aclose()


def main() -> None:
    config = GatewayConfig.from_env()
    configure_logging(config.log_level, config.log_json)
    install_uvloop()
    asyncio.run(_serve(config))


if __name__ == "__main__":
    main()
