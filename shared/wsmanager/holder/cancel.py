"""Background loops that really stop when cancelled.

A library may swallow a ``CancelledError`` (Python 3.11's ``asyncio.timeout`` does when its
deadline and an outside cancel coincide, turning both into a ``TimeoutError``, which a store
adapter then reports as ``StoreUnavailable``). A loop that catches ``Exception`` to survive a
failing store would then run on forever, and whoever awaits it at shutdown would hang. Every
background loop therefore checks :func:`cancel_requested` after an error and at each turn.
"""

from __future__ import annotations

import asyncio

__all__ = ["cancel_requested", "raise_if_cancelled"]


def cancel_requested() -> bool:
    """True once the current task has been asked to stop (even if the error was swallowed)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelled(cause: BaseException | None = None) -> None:
    """Raise ``CancelledError`` if the current task has been asked to stop."""
    if cancel_requested():
        raise asyncio.CancelledError() from cause
