"""The audit log (brief §8): one structured JSON line per connect, disconnect, send,
start_publish, stop_publish and reclaim sweep, with instance id, connection id and correlation id.

Auditing must never fail the request it describes: :meth:`AuditLog.record` swallows every error
of the sink (a full disk, a closed stream, a broken handler) and only counts it, so a broken log
pipeline is visible in ``/metrics`` (``wsm_audit_failures_total``) instead of in users' errors.

URL-valued fields (``url`` and anything ending in ``_url``) are redacted with
:func:`wsmanager.core.validation.redact_url` before they are written: credentials embedded in
outbound URLs never reach a log.

A send is audited too, so the sink sits on the hot path. :class:`StreamSink` (what ``wsm serve``
and ``wsm holder`` use) therefore writes the lines of one event-loop iteration with one
``write`` call, at the end of that iteration, instead of one stdlib-logging round and one system
call per line; nothing waits longer than the current iteration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from wsmanager.core.validation import redact_url

__all__ = ["AUDIT_LOGGER", "AuditLog", "StreamSink"]

#: The stdlib logger the default sink writes to; deployments route it like any other logger.
AUDIT_LOGGER = "wsmanager.audit"


# default=str: an odd field value (an enum, an exception) must not lose the record. One encoder,
# built once: json.dumps with options builds a new one per call.
_encode = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode


def _default_sink(line: str) -> None:
    logging.getLogger(AUDIT_LOGGER).info(line)


class StreamSink:
    """A sink writing JSON lines to a text stream, one ``write`` per event-loop iteration.

    Args:
        stream: where the lines go (``sys.stderr`` for the CLI).
        on_failure: called with the number of lines lost when a write fails (never raises).
    """

    def __init__(self, stream: TextIO, *, on_failure: Callable[[int], None] | None = None) -> None:
        self._stream = stream
        self._on_failure = on_failure
        self._buffer: list[str] = []
        self._scheduled = False

    def __repr__(self) -> str:
        return f"StreamSink(pending={len(self._buffer)})"

    def __call__(self, line: str) -> None:
        self._buffer.append(line)
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (start-up, tests): write at once
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is buffered now. Never raises."""
        self._scheduled = False
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        try:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
        except Exception:  # a closed or full stream loses these lines, and says how many
            if self._on_failure is not None:
                try:
                    self._on_failure(len(lines))
                except Exception:  # nothing a counter does may escape a sink
                    pass


def _is_url_field(name: str) -> bool:
    return name == "url" or name.endswith("_url")


class AuditLog:
    """Writes audit records as single-line JSON to ``sink`` (default: the ``wsmanager.audit``
    stdlib logger at INFO).

    Args:
        sink: receives one complete JSON line per record.
        wall_clock: seconds since the epoch, for the record's ``ts``.
        on_failure: called (also guarded) each time the sink fails, e.g. a metrics counter.
    """

    def __init__(
        self,
        sink: Callable[[str], None] | None = None,
        *,
        wall_clock: Callable[[], float] = time.time,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self._sink = sink or _default_sink
        self._clock = wall_clock
        self._on_failure = on_failure
        #: Records the sink failed to take (a failing sink never fails a request).
        self.failures = 0
        # The current whole second and its ISO-8601 text: formatted once per second, not per
        # record (records come thousands per second on a busy holder).
        self._second: tuple[int, str] = (-1, "")

    def __repr__(self) -> str:
        return f"AuditLog(failures={self.failures})"

    def _iso(self, ts: float) -> str:
        whole = int(ts)
        if self._second[0] != whole:
            text = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (whole, text)
        return f"{self._second[1]}.{int((ts - whole) * 1000):03d}Z"

    def render(
        self,
        action: str,
        *,
        instance_id: str,
        connection_id: str | None,
        correlation_id: str | None,
        **fields: Any,
    ) -> str:
        """The JSON line for one record (exposed so tests can check the format directly)."""
        return self._line(action, instance_id, connection_id, correlation_id, fields)

    def _line(
        self,
        action: str,
        instance_id: str,
        connection_id: str | None,
        correlation_id: str | None,
        fields: dict[str, Any],
    ) -> str:
        record: dict[str, Any] = {
            "ts": self._iso(self._clock()),
            "log": "audit",
            "action": action,
            "instance_id": instance_id,
            "connection_id": connection_id,
            "correlation_id": correlation_id,
        }
        for name, value in fields.items():
            if name in record:
                name = f"field_{name}"  # never let a field overwrite the fixed columns
            if _is_url_field(name) and isinstance(value, str):
                value = redact_url(value)
            record[name] = value
        return _encode(record)

    def record(
        self,
        action: str,
        *,
        instance_id: str,
        connection_id: str | None,
        correlation_id: str | None,
        **fields: Any,
    ) -> None:
        """Write one audit record. Never raises."""
        try:
            self._sink(self._line(action, instance_id, connection_id, correlation_id, fields))
        except Exception:  # by contract: auditing never fails the caller
            self.failures += 1
            if self._on_failure is not None:
                try:
                    self._on_failure()
                except Exception:  # a broken counter must not break auditing either
                    pass
