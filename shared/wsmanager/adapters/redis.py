"""Redis state store on ``redis.asyncio``, laid out like Dapr's Redis state store.

Layout (so a Dapr sidecar and this adapter can read each other's records): each key is a Redis
HASH at ``key_prefix + key`` with fields ``data`` (the value bytes) and ``version`` (an integer
as a decimal string, which is the ETag). A Dapr deployment's state keys carry the app id, so use
``key_prefix="<appid>||"`` to share records with Dapr.

Semantics are the port's (see :mod:`wsmanager.ports`), identical to the memory adapter:

* every write and delete runs as one Lua script that checks every precondition and then applies
  every operation, so a multi-key transaction is atomic on the server and concurrent CAS writers
  from any number of processes see exactly one winner;
* ``ABSENT`` means the key must not exist; a mismatched ETag raises :class:`ConcurrencyConflict`;
* a saved TTL is ``PEXPIRE``; a save without TTL ``PERSIST`` s the key (clears an earlier TTL);
* connection errors, timeouts and any other Redis error raise :class:`StoreUnavailable`.

Versions of existing keys grow by one (``HINCRBY``, as Dapr does). A key that is created (or
re-created after a delete or expiry) starts at the server's clock in microseconds instead of 1:
an ETag read before the delete can then never match the new key (no ABA), which Dapr's
counting from 1 would allow. Keys of other types, or hashes without ``data``, count as absent.
A multi-key script needs all its keys in one slot, so Redis Cluster is not supported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError, ResponseError

from wsmanager.adapters._keys import check_key, check_operations, check_prefix, check_ttl
from wsmanager.core.errors import ConcurrencyConflict, InvalidArgument, StoreUnavailable
from wsmanager.core.validation import redact_text, redact_url
from wsmanager.ports import Absent, Delete, Etag, Expect, Operation, Upsert, Versioned

__all__ = ["RedisStateStore", "redis_from_url"]

# ARGV holds 5 fields per operation (KEYS[i] is its key): kind S(ave)/D(elete), expectation
# N(one)/A(bsent)/E(tag), the expected ETag, the value, the TTL in ms ("0": none).
# Returns {0, i} if operation i's expectation fails (nothing applied), else {1, etag...}.
_TRANSACT_LUA = """
local function stamp()
  local t = redis.call('TIME')
  return t[1] .. string.format('%06d', tonumber(t[2]))
end
local state = {}
for i = 1, #KEYS do
  local base = (i - 1) * 5
  local kind = redis.call('TYPE', KEYS[i])['ok']
  local exists = kind == 'hash' and redis.call('HEXISTS', KEYS[i], 'data') == 1
  local version = exists and redis.call('HGET', KEYS[i], 'version')
  local mode = ARGV[base + 2]
  if mode == 'A' and exists then return {0, i} end
  if mode == 'E' and (not exists or version ~= ARGV[base + 3]) then return {0, i} end
  state[i] = {kind, exists, version}
end
local out = {1}
for i = 1, #KEYS do
  local key, base = KEYS[i], (i - 1) * 5
  local kind, exists, version = state[i][1], state[i][2], state[i][3]
  if ARGV[base + 1] == 'D' then
    redis.call('DEL', key)
    out[i + 1] = ''
  else
    if exists and version and tonumber(version) then
      redis.call('HSET', key, 'data', ARGV[base + 4])
      redis.call('HINCRBY', key, 'version', 1)
    else
      if kind ~= 'none' then redis.call('DEL', key) end
      redis.call('HSET', key, 'data', ARGV[base + 4], 'version', stamp())
    end
    if ARGV[base + 5] ~= '0' then
      redis.call('PEXPIRE', key, ARGV[base + 5])
    else
      redis.call('PERSIST', key)
    end
    out[i + 1] = redis.call('HGET', key, 'version')
  end
end
return out
"""

# Beyond this a TTL means "never" (memory: monotonic() + inf); PEXPIRE would reject it.
_MAX_TTL_MS = 10**15


#: Connections one client may hold. Bursts (hundreds of adoptions at once, renewals) wait for a
#: free connection instead of failing: redis-py's default pool raises when it is exhausted.
POOL_SIZE = 128


def redis_from_url(url: str, *, socket_timeout: float = 5.0) -> Redis:
    """A client for ``url`` that times out after ``socket_timeout``, retries a lost connection
    twice (a dead Redis is reported within seconds), and waits for a pooled connection.

    Raises:
        InvalidArgument: the URL is malformed (shown without its credentials).
    """
    try:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=POOL_SIZE,
            timeout=socket_timeout,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.2), retries=2),
        )
    except ValueError as exc:  # redis-py's verdict on a malformed URL
        raise InvalidArgument(f"bad Redis URL {redact_url(url)!r}") from exc
    return Redis.from_pool(pool)


def _ttl_ms(ttl_seconds: float | None) -> int:
    if ttl_seconds is None or not math.isfinite(ttl_seconds):
        return 0
    # Round up: a key may outlive its TTL by < 1 ms, never expire early (0 would delete it).
    ms = max(1, math.ceil(ttl_seconds * 1000))
    return 0 if ms > _MAX_TTL_MS else ms


class RedisStateStore:
    """The :class:`~wsmanager.ports.StateStore` port on Redis (Dapr's layout, module doc).

    ``client_or_url`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL (the store creates
    the client and closes it in :meth:`close`) or a ``redis.asyncio.Redis`` that the caller owns
    (left open by :meth:`close`; it must not use ``decode_responses``). Clients created from a
    URL time out after ``socket_timeout`` seconds and retry a lost connection only twice, so a
    dead Redis is reported (``StoreUnavailable``) within seconds.
    """

    def __init__(
        self,
        client_or_url: str | Redis,
        *,
        key_prefix: str = "",
        socket_timeout: float = 5.0,
    ) -> None:
        self._prefix = check_prefix(key_prefix)
        if isinstance(client_or_url, str):
            self._where = f"url={redact_url(client_or_url)!r}"
            self._client: Redis = redis_from_url(client_or_url, socket_timeout=socket_timeout)
            self._owns_client = True
        elif isinstance(client_or_url, Redis):
            kwargs = client_or_url.connection_pool.connection_kwargs
            if kwargs.get("decode_responses"):
                raise InvalidArgument("the Redis client must not use decode_responses")
            where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
            self._where = f"client='{where}/{kwargs.get('db', 0)}'"
            self._client = client_or_url
            self._owns_client = False
        else:
            raise InvalidArgument("RedisStateStore needs a Redis URL or a redis.asyncio.Redis")
        self._transact_script = self._client.register_script(_TRANSACT_LUA)

    def __repr__(self) -> str:
        return f"RedisStateStore({self._where}, key_prefix={self._prefix!r})"

    def _full_key(self, key: str) -> str:
        check_key(key)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            # Redis keys are bytes; a lone surrogate has no UTF-8 form.
            raise InvalidArgument("state key must be encodable as UTF-8") from None
        return self._prefix + key

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        # redis-py messages name host and port, not passwords; redact URLs anyway.
        detail = redact_text(str(exc))
        return StoreUnavailable(f"redis state store failed: {type(exc).__name__}: {detail}")

    async def get(self, key: str) -> Versioned | None:
        full = self._full_key(key)
        try:
            data, version = await self._client.hmget(full, ["data", "version"])
        except ResponseError as exc:
            if _wrong_type(exc):  # not our layout: absent, as for bulk_get and writes
                return None
            raise self._unavailable(exc) from exc
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        return _versioned(data, version)

    async def bulk_get(self, keys: Sequence[str]) -> dict[str, Versioned]:
        """All keys in one pipelined round trip (one ``HMGET`` per key, not a transaction)."""
        for key in keys:
            self._full_key(key)  # every key is checked before any I/O (InvalidArgument)
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in unique:
                    pipe.hmget(self._prefix + key, ["data", "version"])
                replies: list[Any] = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        out: dict[str, Versioned] = {}
        for key, reply in zip(unique, replies, strict=True):
            if isinstance(reply, Exception):
                if _wrong_type(reply):  # not our layout: counts as absent
                    continue
                raise self._unavailable(reply) from reply
            found = _versioned(*reply)
            if found is not None:
                out[key] = found
        return out

    async def save(
        self, key: str, value: bytes, *, expect: Expect = None, ttl_seconds: float | None = None
    ) -> Etag:
        if not isinstance(value, bytes):
            raise InvalidArgument("state values are bytes")
        check_ttl(ttl_seconds)
        (etag,) = await self._run([Upsert(key, value, expect, ttl_seconds)])
        return etag

    async def delete(self, key: str, *, expect: Etag | None = None) -> None:
        await self._run([Delete(key, expect)])

    async def transact(self, operations: Sequence[Operation]) -> None:
        check_operations(operations)
        if operations:
            await self._run(operations)

    async def _run(self, operations: Sequence[Operation]) -> list[Etag]:
        """One script call: check every expectation, then apply every operation."""
        keys: list[str] = []
        args: list[bytes | str | int] = []
        for op in operations:
            keys.append(self._full_key(op.key))
            expect: object = op.expect
            if isinstance(expect, Absent):
                mode, etag = "A", ""
            elif expect is None:
                mode, etag = "N", ""
            else:
                # A non-string "ETag" can never match (as in memory); NUL is in no version.
                mode, etag = "E", expect if isinstance(expect, str) else "\0"
            if isinstance(op, Upsert):
                args += ["S", mode, etag, op.value, _ttl_ms(op.ttl_seconds)]
            else:
                args += ["D", mode, etag, b"", 0]
        try:
            reply: list[Any] = await self._transact_script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc
        if reply[0] == 0:
            op = operations[int(reply[1]) - 1]
            what = (
                "first write: key already exists"
                if isinstance(op.expect, Absent)
                else ("ETag mismatch")
            )
            raise ConcurrencyConflict(f"{what} on {op.key!r}", key=op.key)
        return [Etag(_text(version)) for version in reply[1:]]

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        """Close the client if this store created it (from a URL); a caller's client stays open."""
        if self._owns_client:
            await self._client.aclose()

    async def drop_namespace(self) -> None:
        """Delete every key under this store's prefix (test cleanup; ``SCAN`` + ``DEL``).

        Refused for an empty prefix: that would empty a database other software may share.
        """
        if not self._prefix:
            raise InvalidArgument("drop_namespace needs a key prefix (it would empty the database)")
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self._prefix) + "*"
        try:
            batch: list[Any] = []
            async for name in self._client.scan_iter(match=pattern, count=500):
                batch.append(name)
                if len(batch) >= 500:
                    await self._client.delete(*batch)
                    batch.clear()
            if batch:
                await self._client.delete(*batch)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from exc


def _wrong_type(exc: BaseException) -> bool:
    return isinstance(exc, ResponseError) and str(exc).startswith("WRONGTYPE")


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _versioned(data: bytes | str | None, version: bytes | str | None) -> Versioned | None:
    if data is None:
        return None
    value = data if isinstance(data, bytes) else data.encode()  # str only from a decoding client
    return Versioned(value, Etag(_text(version) if version is not None else ""))
