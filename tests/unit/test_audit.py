"""The audit log: one JSON line per record, URLs redacted, a failing sink never fails a caller."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest

from wsmanager.holder.audit import AUDIT_LOGGER, AuditLog, StreamSink
from wsmanager.holder.metrics import HolderMetrics


def test_record_is_one_json_line_with_the_ids() -> None:
    lines: list[str] = []
    audit = AuditLog(lines.append, wall_clock=lambda: 0.25)
    audit.record(
        "connect", instance_id="pod-a", connection_id="c1", correlation_id="corr-1", status="OK"
    )
    assert len(lines) == 1 and "\n" not in lines[0]
    record = json.loads(lines[0])
    assert record == {
        "ts": "1970-01-01T00:00:00.250Z",
        "log": "audit",
        "action": "connect",
        "instance_id": "pod-a",
        "connection_id": "c1",
        "correlation_id": "corr-1",
        "status": "OK",
    }


def test_url_fields_are_redacted() -> None:
    lines: list[str] = []
    AuditLog(lines.append).record(
        "connect",
        instance_id="pod-a",
        connection_id="c1",
        correlation_id=None,
        url="wss://user:hunter2@example.com/feed?token=s3cret&venue=x",
        target_url="ws://a:b@example.com/",
    )
    record = json.loads(lines[0])
    assert "hunter2" not in lines[0] and "s3cret" not in lines[0] and "a:b@" not in lines[0]
    assert record["url"] == "wss://example.com/feed?token=***&venue=x"
    assert record["target_url"] == "ws://example.com/"


def test_fields_never_overwrite_the_fixed_columns() -> None:
    lines: list[str] = []
    AuditLog(lines.append).record(
        "send", instance_id="pod-a", connection_id="c1", correlation_id="x", log="forged"
    )
    record = json.loads(lines[0])
    assert record["log"] == "audit" and record["field_log"] == "forged"


def test_unserialisable_values_are_rendered_not_lost() -> None:
    lines: list[str] = []
    AuditLog(lines.append).record(
        "send", instance_id="p", connection_id="c", correlation_id="x", error=ValueError("boom")
    )
    assert json.loads(lines[0])["error"] == "boom"


def test_failing_sink_is_swallowed_and_counted() -> None:
    metrics = HolderMetrics()

    def broken(line: str) -> None:
        raise OSError("disk full")

    audit = AuditLog(broken, on_failure=metrics.audit_failures.inc)
    for _ in range(3):
        audit.record("disconnect", instance_id="p", connection_id="c", correlation_id="x")
    assert audit.failures == 3
    assert metrics.registry.get_sample_value("wsm_audit_failures_total") == 3.0


def test_failing_failure_hook_is_swallowed_too() -> None:
    def broken(line: str) -> None:
        raise RuntimeError("sink")

    def hook() -> None:
        raise RuntimeError("hook")

    audit = AuditLog(broken, on_failure=hook)
    audit.record("send", instance_id="p", connection_id="c", correlation_id="x")
    assert audit.failures == 1


def test_default_sink_is_the_audit_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        AuditLog().record("stop_publish", instance_id="p", connection_id="c", correlation_id="x")
    [entry] = [r for r in caplog.records if r.name == AUDIT_LOGGER]
    assert json.loads(entry.getMessage())["action"] == "stop_publish"


class _Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_stream_sink_writes_one_loop_iteration_at_once() -> None:
    stream = _Stream()
    audit = AuditLog(StreamSink(stream))
    for i in range(5):
        audit.record("send", instance_id="p", connection_id=f"c{i}", correlation_id="x")
    assert stream.getvalue() == ""  # nothing yet: written at the end of this iteration
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["connection_id"] for line in lines] == [f"c{i}" for i in range(5)]
    assert stream.writes == 1


def test_stream_sink_without_a_loop_writes_at_once() -> None:
    stream = _Stream()
    StreamSink(stream)('{"a":1}')
    assert stream.getvalue() == '{"a":1}\n'


async def test_stream_sink_failure_is_counted_not_raised() -> None:
    stream = io.StringIO()
    stream.close()
    lost: list[int] = []
    sink = StreamSink(stream, on_failure=lost.append)
    sink("one")
    sink("two")
    await asyncio.sleep(0)
    assert lost == [2]
