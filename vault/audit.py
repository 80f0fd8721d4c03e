"""The vault's tamper-evident audit log: who touched which token or key, why, when.

Entries go to the Redis stream ``{prefix}:vault:{audit}:log``; the chain head
(last sequence number and MAC) is ``{prefix}:vault:{audit}:head`` (one hash
tag, so the append script is atomic on Redis Cluster too). Each entry holds
its fields, ``seq`` (1, 2, 3, ...) and ``mac`` = HMAC-SHA256 under the audit
key (a keyring entry) over the previous entry's MAC and this entry's fields.
An entry names the caller, tenant and token, never card data.

Throughput: one global chain would collapse if every call did an optimistic
compare-and-append of its own. Instead each process runs one appender task:
callers queue their entry and wait; the appender takes everything queued,
chains it from the head it knows, and writes the whole batch with one script
that checks the head is still what it chained from. With one process the
check never fails; with several, a loser re-reads the head and re-chains
its batch, so contention costs one retry per batch, not per entry.

Limits (see the key tool's ``audit verify``): an attacker with write access
to Redis cannot alter, remove, insert or reorder an entry without breaking
the chain, but can cut the newest entries off the tail and move the head
back with them. Only a checkpoint kept outside Redis shows that: ``verify``
with a head an earlier run reported fails with ROLLED_BACK once the log no
longer holds it. A process that sees the head move back below what it
wrote itself logs an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any, Protocol

from redis.asyncio import Redis

from common.errors import CardLinkError, Unavailable, invalid_field
from common.logging import scrub_card_numbers
from common.store_errors import redis_errors
from vault.crypto import AuditMacKey
from vault.keyring import Keyring

logger = logging.getLogger("cardlink.vault.audit")

AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
DETOKENIZE = "detokenize"
DELETE = "delete"
KEY_ROTATE = "key.rotate"
KEY_RETIRE = "key.retire"
KEY_DESTROY = "key.destroy_expired"
KEY_REWRAP = "key.rewrap"
ROOT_INIT = "root.init"
ROOT_UNSEAL = "root.unseal"
ROOT_REKEY = "root.rekey"
ROOT_ROTATE = "root.rotate"
CALL_REFUSED = "call.refused"
RESULT_OK = "OK"
# Written before a destructive operation runs; the outcome entry follows it.
RESULT_INTENT = "INTENT"

FIELDS = ("action", "caller", "tenant", "token", "result", "time", "reason", "request_id")
_MAX_BATCH = 512
# Entries kept in memory while sealed (unseal attempts, refusals): a flood of
# refused calls must not exhaust memory. The rest are counted and the count
# is audited after unseal.
MAX_SEALED_BACKLOG = 10_000
AUDIT_OVERFLOW = "audit.sealed_overflow"
_ATTEMPTS = 16
_PAGE = 2000

# Append a batch iff the head is still what the caller chained from: its seq
# and its MAC (a head whose last entry Redis lost, then rewritten by another
# process under the same seq, has another MAC; chaining on would break the
# chain for good). KEYS: stream, head. ARGV: expected head seq, expected head
# mac, new head seq, new head mac, then per entry the values of FIELDS, seq
# and mac (10 values). Returns {1, id, id, ...} or {0, head seq, head mac}.
_APPEND = """
local head = redis.call('HMGET', KEYS[2], 'seq', 'mac')
local seq = head[1] or '0'
if seq ~= ARGV[1] or (head[2] or '') ~= ARGV[2] then return {0, seq, head[2] or ''} end
local names = {'action', 'caller', 'tenant', 'token', 'result', 'time', 'reason',
               'request_id', 'seq', 'mac'}
local reply = {1}
for i = 5, #ARGV, 10 do
  local args = {}
  for j = 1, 10 do
    args[2 * j - 1] = names[j]
    args[2 * j] = ARGV[i + j - 1]
  end
  reply[#reply + 1] = redis.call('XADD', KEYS[1], '*', unpack(args))
end
redis.call('HSET', KEYS[2], 'seq', ARGV[3], 'mac', ARGV[4])
return reply
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audited action. ``result`` is ``OK`` or the error reason."""

    action: str
    caller: str
    tenant: str
    token: str
    result: str
    time: float
    reason: str = ""
    request_id: str = ""

    def values(self) -> tuple[str, ...]:
        """The stored field values, in FIELDS order. The free text, ``reason``
        (a caller's words, an operator's arguments), and the token (a refused
        caller may pick one whose base32 holds a digit run; a real one never
        does) are scrubbed of anything that could spell a card number: the
        log is kept for good. The other fields are identifiers, kept exact;
        where a caller supplied them unchecked (a refused call) they are
        checked where the entry is made."""
        return (self.action, self.caller, self.tenant, scrub_card_numbers(self.token),
                self.result, repr(self.time), scrub_card_numbers(self.reason),
                self.request_id)


def chain_payload(values: Iterable[str], seq: int) -> bytes:
    """What an entry's MAC covers: its sequence number and field values (in
    FIELDS order) as a compact ASCII JSON array.

    Built from json's own string encoder: byte for byte what
    ``json.dumps([...], ensure_ascii=True, separators=(",", ":"))`` gives, at
    a quarter of its cost (this runs once per detokenize).
    """
    return ("[" + ",".join(map(encode_basestring_ascii, (str(seq), *values))) + "]").encode(
        "ascii")


class AuditSink(Protocol):
    """Anything that durably records audit entries, failing loudly if it cannot."""

    async def append(self, entry: AuditEntry) -> str: ...


def _unavailable() -> Unavailable:
    return Unavailable(AUDIT_UNAVAILABLE, "the audit log is unavailable; retry")


def _closed() -> Unavailable:
    return Unavailable(AUDIT_UNAVAILABLE, "the audit log is closed")


def _fail(queued: Iterable[tuple[AuditEntry, asyncio.Future[str]]],
          error: BaseException) -> None:
    """Fail every entry's write still waiting, with ``error``."""
    for _, future in queued:
        if not future.done():
            future.set_exception(error)


def audit_key(prefix: str) -> str:
    return f"{prefix}:vault:{{audit}}:log"


def audit_head_key(prefix: str) -> str:
    return f"{prefix}:vault:{{audit}}:head"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


ROLLED_BACK = "ROLLED_BACK"
CHECKPOINT_INVALID = "CHECKPOINT_INVALID"
_MAC_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One entry of the chain recorded outside Redis (a head that ``verify``
    reported): Redis alone cannot show that its tail was cut, this can."""

    seq: int
    mac: str

    def __post_init__(self) -> None:
        if self.seq < 1:
            raise invalid_field("checkpoint.seq", "must be 1 or more", CHECKPOINT_INVALID)
        if _MAC_HEX.fullmatch(self.mac) is None:
            raise invalid_field("checkpoint.mac", "must be 64 lowercase hex characters",
                                CHECKPOINT_INVALID)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    verified: int
    problem: str = ""
    entry_id: str = ""
    expected_seq: int = 0
    head_seq: int = 0
    head_mac: str = ""


class AuditLog:
    """The chained audit log: appends (batched per process), verifies, exports.

    While the vault is sealed the audit key is not available: entries (unseal
    attempts, refusals) wait in memory and are chained right after unseal.
    """

    def __init__(self, redis: Redis, *, prefix: str, keyring: Keyring) -> None:
        self._redis = redis
        self._keyring = keyring
        self.key = audit_key(prefix)
        self.head_key = audit_head_key(prefix)
        self._script = redis.register_script(_APPEND)
        self._queue: list[tuple[AuditEntry, asyncio.Future[str]]] = []
        self._sealed_backlog: list[AuditEntry] = []
        self._sealed_dropped = 0
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._head: tuple[int, str] | None = None
        self._mac: tuple[bytes, AuditMacKey] | None = None

    async def append(self, entry: AuditEntry) -> str:
        """The stream id of the written entry: '' while sealed (written after
        unseal), and when the write landed but its reply was lost."""
        if self._keyring.sealed:
            if len(self._sealed_backlog) < MAX_SEALED_BACKLOG:
                self._sealed_backlog.append(entry)
            else:
                self._sealed_dropped += 1
            return ""
        if self._sealed_backlog or self._sealed_dropped or self._flushing.locked():
            await self.flush_backlog()
        return await self._enqueue(entry)

    async def flush_backlog(self) -> None:
        """Chain what was recorded while sealed (called right after unseal).

        One batch at a time, in order, while later appends wait: if a write
        fails, what it did not write and the rest stay queued, still first,
        for the next append (the sealed period's entries exist nowhere else).
        """
        async with self._flushing:
            backlog, self._sealed_backlog = self._sealed_backlog, []
            dropped, self._sealed_dropped = self._sealed_dropped, 0
            if dropped:
                last = backlog[-1].time if backlog else 0.0
                backlog.append(AuditEntry(
                    action=AUDIT_OVERFLOW, caller="vault", tenant="", token="",
                    result="DROPPED", time=last,
                    reason=f"{dropped} entries not kept while sealed (backlog limit "
                           f"{MAX_SEALED_BACKLOG})"))
            for start in range(0, len(backlog), _MAX_BATCH):
                batch, rest = backlog[start:start + _MAX_BATCH], backlog[start + _MAX_BATCH:]
                futures = [self._enqueue(entry) for entry in batch]
                written = asyncio.ensure_future(asyncio.wait(futures))
                try:
                    await asyncio.shield(written)
                except asyncio.CancelledError:
                    # The caller gave up (a deadline, then perhaps shutdown): the
                    # queued batch is still settled, and what it did not write
                    # kept, before giving up. A write ends within the Redis timeout.
                    while not written.done():
                        with contextlib.suppress(asyncio.CancelledError):
                            await asyncio.shield(written)
                    self._keep_unwritten(batch, futures, rest)
                    raise
                failure = self._keep_unwritten(batch, futures, rest)
                if failure is not None:
                    raise failure

    def _keep_unwritten(self, batch: list[AuditEntry], futures: list[asyncio.Future[str]],
                        rest: list[AuditEntry]) -> BaseException | None:
        """Put back, first, the batch's entries that were not written and the
        rest of the backlog; the first failure, if any. Only what failed goes
        back: part of a batch may have shared a write with earlier entries."""
        failed = [(entry, future) for entry, future in zip(batch, futures, strict=True)
                  if future.cancelled() or future.exception() is not None]
        unwritten = [entry for entry, _ in failed]
        if unwritten or rest:
            self._sealed_backlog[:0] = unwritten + rest
        if not failed:
            return None
        first = failed[0][1]
        return (None if first.cancelled() else first.exception()) or _unavailable()

    def _enqueue(self, entry: AuditEntry) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((entry, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._appender(), name="audit-appender")
        return future

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Nobody writes them now: their callers must not wait for ever.
        _fail(self._queue, _closed())
        self._queue.clear()

    async def _appender(self) -> None:
        # Runs while there is work and ends when the queue is empty; the next
        # append starts it again (so nothing is left pending at shutdown). Its
        # first step runs a loop turn after it was created, so every entry
        # queued in that turn is in the first batch.
        while self._queue:
            batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
            try:
                ids = await self._write([entry for entry, _ in batch])
            except asyncio.CancelledError:
                # Closing mid-write (outcome unknown): no caller may wait for ever.
                _fail(batch, _closed())
                raise
            except Exception as error:
                self._head = None  # the write may have landed: re-read the head
                _fail(batch, error if isinstance(error, CardLinkError) else _unavailable())
                continue
            for (_, future), entry_id in zip(batch, ids, strict=True):
                if not future.done():
                    future.set_result(entry_id)

    async def _mac_key(self) -> AuditMacKey:
        material = (await self._keyring.snapshot()).audit_key
        if self._mac is None or self._mac[0] != material:
            self._mac = (material, AuditMacKey(material))
        return self._mac[1]

    async def head(self) -> tuple[int, str]:
        with redis_errors(AUDIT_UNAVAILABLE):
            seq, mac = await self._redis.hmget(self.head_key, ["seq", "mac"])
        return (0, "") if seq is None else (int(seq), _text(mac or b""))

    async def _write(self, entries: list[AuditEntry]) -> list[str]:
        mac_key = await self._mac_key()
        for _ in range(_ATTEMPTS):
            head = self._head or await self.head()
            seq, mac = head
            args: list[str] = []
            for entry in entries:
                values = entry.values()
                seq += 1
                mac = mac_key.mac(mac, chain_payload(values, seq))
                args += [*values, str(seq), mac]
            try:
                with redis_errors(AUDIT_UNAVAILABLE):
                    reply = await self._script(keys=[self.key, self.head_key],
                                               args=[str(head[0]), head[1], str(seq), mac,
                                                     *args])
            except Unavailable:
                # The reply may be all that was lost: a head at this batch's
                # MAC means the batch is in (retrying it would write it twice).
                if await self.head() != (seq, mac):
                    raise
                self._head = (seq, mac)
                return [""] * len(entries)
            if int(reply[0]) == 1:
                self._head = (seq, mac)
                return [_text(r) for r in reply[1:]]
            # Another process appended: chain from its head instead.
            self._head = (int(reply[1]), _text(reply[2]))
            if self._head[0] < head[0]:
                # Heads only move forward: entries were cut off (or the head rewritten).
                logger.error("the audit chain head moved back from seq %d to %d: entries "
                             "may have been removed; run `audit verify --checkpoint`",
                             head[0], self._head[0])
        raise Unavailable(AUDIT_UNAVAILABLE, "the audit log is too contended; retry")

    async def entries(self, start_seq: int = 0) -> AsyncIterator[tuple[str, dict[str, str]]]:
        """(stream id, fields) in log order, from ``start_seq`` on."""
        after = "-"
        while True:
            with redis_errors(AUDIT_UNAVAILABLE):
                page: list[Any] = await self._redis.xrange(  # type: ignore[assignment]
                    self.key, min=after, count=_PAGE)
            for entry_id, raw in page:
                fields = {_text(k): _text(v) for k, v in raw.items()}
                seq = fields.get("seq", "")
                if not seq.isdigit() or int(seq) >= start_seq:
                    yield _text(entry_id), fields
            if len(page) < _PAGE:
                return
            after = "(" + _text(page[-1][0])

    async def verify(self, checkpoint: Checkpoint | None = None) -> Verification:
        """Check every entry's sequence number and MAC, then the head.

        Entries past the head are checked too: ones appended while this runs
        chain on and are covered by the head read at the end; any the final
        head does not cover mean the head was deleted or moved back
        (BEYOND_HEAD). With a ``checkpoint``, the log must still hold that
        entry, MAC and all (ROLLED_BACK otherwise): the one check that sees a
        tail cut off together with the head.
        """
        head_seq, head_mac = await self.head()
        mac_key = await self._mac_key()
        expected, previous, verified = 1, "", 0
        mac_at_head, first_beyond = "", ""
        async for entry_id, fields in self.entries():
            problem = self._check(mac_key, fields, expected, previous)
            if not problem and checkpoint is not None and expected == checkpoint.seq and (
                    fields["mac"] != checkpoint.mac):
                problem = ROLLED_BACK  # cut back below the checkpoint, then grown again
            if problem:
                return Verification(False, verified, problem, entry_id, expected, head_seq,
                                    head_mac)
            if expected <= head_seq:
                verified += 1
                if expected == head_seq:
                    mac_at_head = fields["mac"]
            elif not first_beyond:
                first_beyond = entry_id
            previous, expected = fields["mac"], expected + 1
        if verified != head_seq or mac_at_head != head_mac:
            return Verification(False, verified, "TRUNCATED", "", verified + 1, head_seq,
                                head_mac)
        if first_beyond:
            latest_seq, _ = await self.head()
            if latest_seq < expected - 1:
                return Verification(False, verified, "BEYOND_HEAD", first_beyond, head_seq + 1,
                                     head_seq, head_mac)
        if checkpoint is not None and checkpoint.seq >= expected:  # the log ends before it
            return Verification(False, verified, ROLLED_BACK, "", checkpoint.seq, head_seq,
                                head_mac)
        return Verification(True, verified, head_seq=head_seq, head_mac=head_mac)

    @staticmethod
    def _check(mac_key: AuditMacKey, fields: dict[str, str], expected: int,
               previous: str) -> str:
        if any(name not in fields for name in (*FIELDS, "seq", "mac")) or not (
                fields["seq"].isdigit()):
            return "MALFORMED"
        seq = int(fields["seq"])
        if seq > expected:
            return "MISSING_OR_REORDERED"
        if seq < expected:
            return "INSERTED_OR_REORDERED"
        if not mac_key.verify(previous, chain_payload((fields[name] for name in FIELDS), seq),
                              fields["mac"]):
            return "ALTERED"
        return ""
