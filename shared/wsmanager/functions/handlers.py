"""The one handler behind every function: decode, deduplicate, route, reply.

:func:`handle` is framework-free (a request in, a :class:`Reply` out) so that the same code runs
under functions-framework (``functions/<name>/main.py``), under the ASGI app of
:mod:`wsmanager.functions.asgi`, or inside an aiohttp route of ``wsm serve``.

Status codes follow at-least-once delivery: a retryable failure (store or holder unavailable,
a delivery of the same event still running) is 5xx so Knative redelivers; a poison input
(malformed event, unknown type, invalid data) is 4xx and changes nothing. The holder's own
answer is passed through as it is, with one exception: a holder refusing the function's
internal token (401/403) is the function's misconfiguration, not the caller's fault, and is
answered 503 so the event survives until the token is fixed.
"""

from __future__ import annotations

import logging

from wsmanager.core.errors import InvalidArgument, Unavailable, WsmError
from wsmanager.functions.commands import Route
from wsmanager.functions.decoding import (
    Incoming,
    Invocation,
    correlation_of,
    decode,
    detect_mode,
    peek,
)
from wsmanager.functions.dedupe import Answer
from wsmanager.functions.replies import Reply, error_answer, reply_for, reply_to_failure
from wsmanager.functions.runtime import Runtime, deps

__all__ = ["PayloadTooLarge", "execute", "handle"]

log = logging.getLogger("wsmanager.functions")


class PayloadTooLarge(InvalidArgument):
    http_status = 413


def _vet(answer: Answer, command: str) -> Answer:
    if answer.status in (401, 403):
        return error_answer(
            Unavailable(
                f"a holder refused this function's credentials (HTTP {answer.status}) "
                f"for {command}; check WSM_INTERNAL_TOKEN"
            )
        )
    return answer


async def execute(runtime: Runtime, invocation: Invocation) -> Answer:
    """Run a decoded command and return the answer to give (see the module doc).

    Raises:
        WsmError: failures of the idempotency record itself (in progress, store down, id reuse).
    """
    command = invocation.command
    cid = invocation.correlation_id
    if command.route is Route.RECLAIM:
        outcome = await runtime.router.reclaim(cid)
        return Answer.of_json(200, outcome.to_json())
    call = command.build(invocation.data)

    async def act() -> Answer:
        try:
            if command.route is Route.OWNER:
                answer = await runtime.router.to_owner(call, cid)
            else:
                answer = await runtime.router.to_any(call, cid)
        except WsmError as exc:
            # An answer, not an exception: a final one (NotFound) is replayed to redeliveries,
            # a retryable one (store or holder down) releases the idempotency record.
            if exc.retryable:
                log.warning("%s %s: %s", command.name, cid, exc)
            return error_answer(exc)
        return _vet(answer, command.name)

    if command.dedupe and invocation.identity is not None and runtime.dedupe is not None:
        return await runtime.dedupe.run(
            invocation.identity, invocation.fingerprint, act, runs_for=call.timeout
        )
    return await act()


async def handle(function: str, incoming: Incoming, *, runtime: Runtime | None = None) -> Reply:
    """Answer one request to ``function`` (a folder name under ``functions/``).

    ``runtime`` defaults to the process's own (:func:`~wsmanager.functions.runtime.deps`).
    Never raises: every failure becomes a reply with the status of ``core.errors``.
    """
    mode = detect_mode(incoming.headers)
    fallback_cid = correlation_of(incoming.headers.get("ce-id"), incoming.headers)
    try:
        runtime = runtime or await deps()
    except WsmError as exc:
        return reply_to_failure(function, mode, exc, fallback_cid)
    except Exception:
        log.exception("could not build the %s function's dependencies", function)
        unready = Unavailable("the function could not start; see its log")
        return reply_to_failure(function, mode, unready, fallback_cid)
    try:
        if len(incoming.body) > runtime.max_body:
            raise PayloadTooLarge(f"request body is larger than {runtime.max_body} bytes")
        invocation = decode(function, incoming)
    except WsmError as exc:
        command, identity = peek(function, incoming)
        cid = fallback_cid if identity is None else correlation_of(identity[1], incoming.headers)
        return reply_to_failure(function, mode, exc, cid, command=command, identity=identity)
    try:
        answer = await execute(runtime, invocation)
    except WsmError as exc:
        answer = error_answer(exc)
    except Exception:
        log.exception("unhandled error in %s (correlation id %s)", function, fallback_cid)
        answer = error_answer(RuntimeError())  # INTERNAL, no details leak
    return reply_for(invocation, answer)
