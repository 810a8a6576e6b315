"""Idempotency records: a redelivered command gets the first result instead of a second action.

Knative delivers at least once, so the same event (same ``source`` and ``id``, the CloudEvents
identity of a duplicate) can arrive again after a timeout, a crash or a lost reply. The record
lives in the state store under ``websocketmanager.dedupe.<sha256(source|id)>`` and moves through
two states:

* **pending**: written with a first write (``ABSENT``) before the command runs, with a TTL a
  little longer than the command may take. Exactly one of several concurrent deliveries wins
  that write; the others are told "in progress" (503, retryable) and come back later. If the
  winner dies mid-command, the pending record expires and a later redelivery runs the command.
* **done**: the holder's answer (status, content type, body), written by CAS over the pending
  record and kept for ``result_ttl``. Redeliveries are answered from it.

Only final answers are kept. A retryable one (5xx, 408, 409, 412, 429: the holder or store was
unavailable, or the socket was not connected yet) deletes the pending record, so the
redelivery Knative makes for that very status runs the command again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from wsmanager.core.errors import (
    ConcurrencyConflict,
    InvalidEvent,
    StoreUnavailable,
    Unavailable,
    WsmError,
)
from wsmanager.ports import ABSENT, Etag, StateStore

__all__ = ["DEDUPE_PREFIX", "Answer", "Dedupe", "InProgress", "dedupe_key", "is_final"]

log = logging.getLogger("wsmanager.functions")

DEDUPE_PREFIX = "websocketmanager.dedupe."
#: Statuses a redelivery may turn out differently for: never replayed from a record.
_RETRYABLE_4XX = frozenset({408, 409, 412, 425, 429})


@dataclass(frozen=True, slots=True)
class Answer:
    """What a holder (or the function itself) answered: status, content type and body."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def of_json(cls, status: int, data: object) -> Answer:
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(status, "application/json", body)


class InProgress(Unavailable):
    """Another delivery of this event is running; come back for its result (503)."""


def is_final(status: int) -> bool:
    """May this answer be replayed to a redelivery, or should the command run again?"""
    return status < 500 and status not in _RETRYABLE_4XX


def dedupe_key(source: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{source}|{event_id}".encode("utf-8", "surrogatepass")).hexdigest()
    return DEDUPE_PREFIX + digest


@dataclass(frozen=True, slots=True)
class _Claim:
    key: str
    etag: Etag


class Dedupe:
    """Runs commands at most once per event identity (see the module doc).

    Args:
        pending_ttl: how long a pending record blocks redeliveries if its runner dies. Must be
            longer than any command may run (the command's own timeout is added per call).
        result_ttl: how long a final answer is replayed.
    """

    def __init__(
        self, store: StateStore, *, pending_ttl: float = 60.0, result_ttl: float = 3600.0
    ) -> None:
        if pending_ttl <= 0 or result_ttl <= 0:
            raise ValueError("pending_ttl and result_ttl must be > 0")
        self.store = store
        self.pending_ttl = pending_ttl
        self.result_ttl = result_ttl

    def __repr__(self) -> str:
        return f"Dedupe(store={self.store!r}, result_ttl={self.result_ttl})"

    async def run(
        self,
        identity: tuple[str, str],
        fingerprint: str,
        action: Callable[[], Awaitable[Answer]],
        *,
        runs_for: float = 0.0,
    ) -> Answer:
        """The stored answer for ``identity``, or ``action()``'s (stored when final).

        Raises:
            InProgress: another delivery of the same event is running.
            InvalidEvent: the event id was used before with other data.
            StoreUnavailable: the record could not be read or claimed (nothing was done).
        """
        key = dedupe_key(*identity)
        claim = await self._claim(key, fingerprint, runs_for)
        if isinstance(claim, Answer):
            return claim
        try:
            answer = await action()
        except BaseException:
            await asyncio.shield(self._release(claim))
            raise
        if is_final(answer.status):
            await asyncio.shield(self._complete(claim, fingerprint, answer))
        else:
            await asyncio.shield(self._release(claim))
        return answer

    async def _claim(self, key: str, fingerprint: str, runs_for: float) -> _Claim | Answer:
        pending = json.dumps({"state": "pending", "fingerprint": fingerprint}).encode()
        for _ in range(3):
            try:
                etag = await self.store.save(
                    key, pending, expect=ABSENT, ttl_seconds=self.pending_ttl + runs_for
                )
                return _Claim(key, etag)
            except ConcurrencyConflict:
                pass
            current = await self.store.get(key)
            if current is None:
                continue  # expired or released between the two calls: claim again
            done = _parse_done(current.value)
            if done is None:
                raise InProgress("this event is being processed; retry for its result")
            if done[0] != fingerprint:
                raise InvalidEvent("this event id was already used for a different command or data")
            return done[1]
        raise InProgress("this event's record keeps changing; retry later")

    async def _complete(self, claim: _Claim, fingerprint: str, answer: Answer) -> None:
        done = {
            "state": "done",
            "fingerprint": fingerprint,
            "status": answer.status,
            "content_type": answer.content_type,
            "body": base64.b64encode(answer.body).decode(),
        }
        try:
            await self.store.save(
                claim.key,
                json.dumps(done, separators=(",", ":")).encode(),
                expect=claim.etag,
                ttl_seconds=self.result_ttl,
            )
        except (ConcurrencyConflict, WsmError) as exc:
            # The command ran; only its replay is lost. The pending record expires, and a
            # redelivery after that runs the command again: the best at-least-once allows.
            log.warning("could not store the result of %s: %s", claim.key, exc)

    async def _release(self, claim: _Claim) -> None:
        try:
            await self.store.delete(claim.key, expect=claim.etag)
        except (ConcurrencyConflict, StoreUnavailable, WsmError) as exc:
            log.warning("could not release %s (it expires by itself): %s", claim.key, exc)


def _parse_done(raw: bytes) -> tuple[str, Answer] | None:
    """``(fingerprint, answer)`` of a done record; ``None`` for a pending one. A record that
    does not parse counts as pending: never run a command twice on a guess; its TTL ends it."""
    try:
        value = json.loads(raw)
        if value["state"] != "done":
            return None
        answer = Answer(
            int(value["status"]), str(value["content_type"]), base64.b64decode(value["body"])
        )
        return str(value["fingerprint"]), answer
    except (ValueError, TypeError, KeyError):
        return None
