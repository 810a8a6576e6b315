"""The Dapr runtime API that the stand-in serves: the SDK's ``DaprServicer`` on real Redis.

Semantics follow daprd and components-contrib ``state.redis`` (read from their sources); the
list is in :mod:`tests.support.dapr_sidecar`, which runs this servicer on its own thread.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import grpc
import redis.asyncio as aioredis
from dapr.proto.runtime.v1 import dapr_pb2_grpc, pubsub_pb2, secret_pb2, state_pb2
from google.protobuf import empty_pb2

if TYPE_CHECKING:
    from tests.support.dapr_sidecar import DaprSidecar

__all__ = ["make_servicer"]

_FIRST_WRITE, _LAST_WRITE = 1, 2  # common.v1.StateOptions.StateConcurrency
_MISMATCH = "possible etag mismatch. error from state store: "
_FailedEntry = pubsub_pb2.BulkPublishResponseFailedEntry
_RPCS = ("GetState", "GetBulkState", "SaveState", "DeleteState", "ExecuteStateTransaction")
_RPCS += ("PublishEvent", "BulkPublishEvent", "BulkPublishEventAlpha1", "GetSecret")

_LUA_LIB = """
local function may_set(key, ver)
  local v = redis.pcall("HGET", key, "version")
  if type(v) == "table" or not v or v == "" or v == ver then return true end
  return ver == "0" and redis.call("HEXISTS", key, "first-write") == 0
end
local function may_del(key, ver)
  local v = redis.pcall("HGET", key, "version")
  return type(v) == "table" or not v or v == "" or v == ver or ver == "0"
end
local function put(key, data, ttl, fw)
  if redis.call("TYPE", key)["ok"] ~= "hash" then redis.call("DEL", key) end
  redis.call("HSET", key, "data", data)
  if fw == "0" then redis.call("HSET", key, "first-write", 0) end
  local version = redis.call("HINCRBY", key, "version", 1)
  local t = tonumber(ttl)
  if t and t > 0 then redis.call("EXPIRE", key, t) elseif t then redis.call("PERSIST", key) end
  return version
end
"""
_LUA_SET = (
    _LUA_LIB
    + """
if not may_set(KEYS[1], ARGV[1]) then return redis.error_reply("failed to set key " .. KEYS[1]) end
return put(KEYS[1], ARGV[2], ARGV[4], ARGV[3])
"""
)
_LUA_DEL = (
    _LUA_LIB
    + """
if not may_del(KEYS[1], ARGV[1]) then return redis.error_reply("failed to delete " .. KEYS[1]) end
return redis.call("DEL", KEYS[1])
"""
)
# ARGV holds 4 values per key: operation, version ("0" = no ETag), data, ttl.
_LUA_TX = (
    _LUA_LIB
    + """
for i, key in ipairs(KEYS) do
  local op, ver = ARGV[4 * i - 3], ARGV[4 * i - 2]
  if op == "upsert" and not may_set(key, ver) then
    return redis.error_reply("failed to set key " .. key)
  elseif op == "delete" and not may_del(key, ver) then
    return redis.error_reply("failed to delete " .. key)
  end
end
for i, key in ipairs(KEYS) do
  if ARGV[4 * i - 3] == "upsert" then put(key, ARGV[4 * i - 1], ARGV[4 * i], "1")
  else redis.call("DEL", key) end
end
return #KEYS
"""
)


class _Failure(Exception):
    """Ends an RPC with the status daprd would send (``code`` names a grpc.StatusCode)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = grpc.StatusCode[code], message


class _Servicer(dapr_pb2_grpc.DaprServicer):  # type: ignore[misc]
    def __init__(self, car: DaprSidecar, db: aioredis.Redis) -> None:
        self.car, self.db = car, db
        self.set_script, self.del_script, self.tx_script = (
            db.register_script(lua) for lua in (_LUA_SET, _LUA_DEL, _LUA_TX)
        )

    def _key(self, store: str, key: str) -> str:
        if store not in self.car.state_stores:
            raise _Failure("INVALID_ARGUMENT", f"state store {store} is not found")
        if not key or "||" in key:
            raise _Failure("UNKNOWN", f"input key/keyPrefix '{key}' can't contain '||'")
        return f"{self.car.app_id}||{key}"

    async def _read(self, key: str) -> tuple[bytes, str]:
        fields = await self.db.hgetall(key)
        return (fields[b"data"], fields[b"version"].decode()) if fields else (b"", "")

    @staticmethod
    def _version(item: Any) -> str:
        """components-contrib parseETag: last-write or no ETag means "0", else an integer."""
        etag = item.etag.value if item.HasField("etag") else ""
        if item.options.concurrency == _LAST_WRITE or not etag:
            return "0"
        if not etag.lstrip("-").isdigit():
            raise _Failure("INVALID_ARGUMENT", f"invalid etag value: {etag}")
        return str(int(etag))

    async def GetState(self, request: Any, context: Any) -> Any:
        data, etag = await self._read(self._key(request.store_name, request.key))
        return state_pb2.GetStateResponse(data=data, etag=etag)

    async def GetBulkState(self, request: Any, context: Any) -> Any:
        items = []
        for key in request.keys:
            data, etag = await self._read(self._key(request.store_name, key))
            items.append(state_pb2.BulkStateItem(key=key, data=data, etag=etag))
        return state_pb2.GetBulkStateResponse(items=items)

    async def SaveState(self, request: Any, context: Any) -> Any:
        for item in request.states:
            key, ver = self._key(request.store_name, item.key), self._version(item)
            fw = "0" if item.options.concurrency == _FIRST_WRITE else "1"
            args = [ver, item.value, fw, item.metadata.get("ttlInSeconds", "")]
            try:
                await self.set_script(keys=[key], args=args)
            except aioredis.ResponseError as exc:
                text = f"failed saving state in state store {request.store_name}: "
                if item.HasField("etag"):
                    raise _Failure("ABORTED", f"{text}{_MISMATCH}{exc}") from None
                raise _Failure("INTERNAL", f"{text}{exc}") from None
        return empty_pb2.Empty()

    async def DeleteState(self, request: Any, context: Any) -> Any:
        key = self._key(request.store_name, request.key)
        try:
            await self.del_script(keys=[key], args=[request.etag.value or "0"])
        except aioredis.ResponseError as exc:
            text = f"failed deleting state with key {request.key}: {_MISMATCH}{exc}"
            raise _Failure("ABORTED", text) from None
        return empty_pb2.Empty()

    async def ExecuteStateTransaction(self, request: Any, context: Any) -> Any:
        keys: list[str] = []
        args: list[Any] = []
        for op in request.operations:
            item, upsert = op.request, op.operationType == "upsert"
            keys.append(self._key(request.storeName, item.key))
            ver = self._version(item) if upsert else item.etag.value or "0"
            args += [op.operationType, ver, item.value, item.metadata.get("ttlInSeconds", "")]
        try:
            await self.tx_script(keys=keys, args=args)
        except aioredis.ResponseError as exc:
            text = f"error while executing state transaction: {exc}"
            raise _Failure("INTERNAL", text) from None
        return empty_pb2.Empty()

    async def PublishEvent(self, request: Any, context: Any) -> Any:
        self._check_topic(request.pubsub_name, request.topic)
        await self._append(request, request.data, request.data_content_type, request.metadata)
        return empty_pb2.Empty()

    async def BulkPublishEvent(self, request: Any, context: Any) -> Any:
        self._check_topic(request.pubsub_name, request.topic)
        plan = self.car._bulk_failures.get(request.topic, [0, 0])
        failing = plan[0] if plan[1] > 0 else 0
        plan[1] -= 1
        failed = []
        for index, entry in enumerate(request.entries):
            if index < failing:
                failed.append(_FailedEntry(entry_id=entry.entry_id, error="injected failure"))
            else:
                metadata = {**request.metadata, **entry.metadata}
                await self._append(request, entry.event, entry.content_type, metadata)
        return pubsub_pb2.BulkPublishResponse(failedEntries=failed)

    BulkPublishEventAlpha1 = BulkPublishEvent

    async def GetSecret(self, request: Any, context: Any) -> Any:
        store, key = request.store_name, request.key
        if store not in self.car.secret_stores:
            raise _Failure("INVALID_ARGUMENT", f"failed finding secret store with key {store}")
        if key not in self.car.secrets:
            text = f"failed getting secret with key {key} from secret store {store}: "
            raise _Failure("INTERNAL", f'{text}secrets "{key}" not found')
        return secret_pb2.GetSecretResponse(data={key: self.car.secrets[key]})

    def _check_topic(self, pubsub: str, topic: str) -> None:
        if pubsub not in self.car.pubsubs:
            raise _Failure("INVALID_ARGUMENT", f"pubsub {pubsub} not found")
        if topic in self.car.fail_topics:
            raise _Failure("INTERNAL", f"error when publish to topic {topic}: injected")

    async def _append(
        self, request: Any, data: bytes, content_type: str, metadata: Mapping[str, str]
    ) -> None:
        """What daprd does before handing the event to the broker: wrap it in a CloudEvent."""
        if content_type.startswith("application/cloudevents+json"):
            event = json.loads(data)
        else:
            event = {
                "specversion": "1.0",
                "id": metadata.get("cloudevent.id") or str(uuid.uuid4()),
                "source": metadata.get("cloudevent.source") or self.car.app_id,
                "type": metadata.get("cloudevent.type") or "com.dapr.event.sent",
                "datacontenttype": content_type or "text/plain",
            }
            if "json" in content_type:
                event["data"] = json.loads(data)
            elif content_type.startswith("text/") or not content_type:
                event["data"] = data.decode()
            else:
                event["data_base64"] = base64.b64encode(data).decode()
        event.update(topic=request.topic, pubsubname=request.pubsub_name)
        fields = {"data": json.dumps(event), "metadata": json.dumps(dict(metadata))}
        await self.db.xadd(request.topic, fields)  # type: ignore[arg-type]


def _unary(method: Any) -> Any:
    """Turn :class:`_Failure` into the gRPC status the real runtime would send."""

    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(request, context)
        except _Failure as failure:
            await context.abort(failure.code, failure.message)

    return handler


def make_servicer(car: DaprSidecar, db: aioredis.Redis) -> Any:
    """A servicer for ``add_DaprServicer_to_server`` whose RPCs end with daprd's statuses."""
    servicer = _Servicer(car, db)
    for name in _RPCS:
        setattr(servicer, name, _unary(getattr(servicer, name)))
    return servicer
