"""A stand-in Redis that answers every command with one fixed reply, for the
replies a real Redis gives only in states a test cannot cheaply put it in
(loading its dataset, a wrong password, out of memory, a read-only replica)."""

from __future__ import annotations

import asyncio

import hiredis


async def scripted_server(reply: bytes) -> tuple[asyncio.Server, int]:
    """A server on loopback answering every command with ``reply``; its port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while parser.gets() is not False:
                writer.write(reply)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
