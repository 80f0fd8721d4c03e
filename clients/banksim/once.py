"""Do the work once per idempotency key, as the contract requires of a bank."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


class Once:
    def __init__(self) -> None:
        self._done: dict[tuple[str, str], asyncio.Future[Any]] = {}

    def seen(self, method: str, key: str) -> bool:
        return (method, key) in self._done

    async def run(self, method: str, key: str, work: Callable[[], Awaitable[Any]]) -> Any:
        slot = (method, key)
        future = self._done.get(slot)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._done[slot] = future
            try:
                future.set_result(await work())
            except BaseException as error:
                # Nothing was done: a retry with the same key may try again.
                del self._done[slot]
                future.set_exception(error)
                future.exception()  # mark retrieved; concurrent waiters re-raise it
                raise
        return await asyncio.shield(future)
