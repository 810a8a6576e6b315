"""Answers: a binary-mode CloudEvent reply for CloudEvent callers, the holder's answer itself for
plain HTTP callers.

A CloudEvent caller (a Knative Broker/Trigger) gets ``…result.<command>`` with the holder's JSON
body as data and status 200: the data-plane contract routes a reply event only from a 200. A
failure is an ``…error`` event with the error body as data and the failure's own status, so
Knative redelivers exactly what is retryable (5xx, 409, 429) and dead-letters the rest; the
error event travels with it (Knative puts the body into the dead-letter event).

Reply ids are derived from the command event's ``source`` and ``id``: a redelivered command
gets a reply with the same id, so consumers can drop duplicate replies too.

Extension attributes: ``command`` (e.g. ``send``), ``correlationid`` (the command's id),
``websocketid`` (the connection, when the command names one), ``statuscode`` (on errors).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

from wsmanager.core.errors import error_body, http_status
from wsmanager.functions.commands import ERROR_TYPE
from wsmanager.functions.decoding import Invocation, Mode
from wsmanager.functions.dedupe import Answer

__all__ = ["Reply", "error_answer", "reply_for", "reply_to_failure"]

_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP response, framework-free: status, headers (name, value) and body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


def error_answer(error: BaseException) -> Answer:
    """One of our errors as an answer (the one status mapping of ``core.errors``)."""
    return Answer.of_json(http_status(error), error_body(error))


def _source(function: str) -> str:
    return f"/wsmanager/functions/{function}"


def _reply_id(identity: tuple[str, str] | None, event_type: str, fallback: str) -> str:
    seed = "\n".join([*(identity or ("", fallback)), event_type])
    return hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _passthrough(data: Any) -> Any:
    # The holder's body is already JSON: hand it to the SDK as it is (no parse and re-dump).
    return data


def _event_reply(
    *,
    function: str,
    command: str,
    answer: Answer,
    correlation_id: str,
    identity: tuple[str, str] | None,
    connection_id: str | None,
    result_type: str,
) -> Reply:
    ok = 200 <= answer.status < 300
    event_type = result_type if ok else ERROR_TYPE
    attributes = {
        "type": event_type,
        "source": _source(function),
        "id": _reply_id(identity, event_type, correlation_id),
        "datacontenttype": answer.content_type or _JSON,
        "command": command,
        "correlationid": correlation_id,
    }
    if connection_id:
        attributes["websocketid"] = connection_id
        attributes["subject"] = connection_id
    if not ok:
        attributes["statuscode"] = str(answer.status)
    event = CloudEvent(attributes, answer.body or None)
    headers, body = to_binary(event, data_marshaller=_passthrough)
    pairs = tuple((k, str(v)) for k, v in headers.items())
    return Reply(200 if ok else answer.status, (*pairs, ("x-correlation-id", correlation_id)), body)


def reply_for(invocation: Invocation, answer: Answer) -> Reply:
    """The reply to a decoded command (see the module doc)."""
    if invocation.mode.is_event:
        return _event_reply(
            function=invocation.function,
            command=invocation.command.name,
            answer=answer,
            correlation_id=invocation.correlation_id,
            identity=invocation.identity,
            connection_id=invocation.connection_id,
            result_type=invocation.command.result_type,
        )
    headers = (
        ("content-type", answer.content_type),
        ("x-correlation-id", invocation.correlation_id),
    )
    return Reply(answer.status, headers, answer.body)


def reply_to_failure(
    function: str,
    mode: Mode,
    error: BaseException,
    correlation_id: str,
    *,
    command: str | None = None,
    identity: tuple[str, str] | None = None,
) -> Reply:
    """The reply to a request that failed before it became a command (e.g. malformed)."""
    answer = error_answer(error)
    if mode.is_event:
        return _event_reply(
            function=function,
            command=command or function,
            answer=answer,
            correlation_id=correlation_id,
            identity=identity,
            connection_id=None,
            result_type=ERROR_TYPE,
        )
    headers = (("content-type", _JSON), ("x-correlation-id", correlation_id))
    return Reply(answer.status, headers, answer.body)
