"""Retries and a circuit breaker for calls to a backend (the Dapr sidecar, a broker).

:class:`Resilience` runs one logical call as: breaker check -> up to ``attempts`` tries with
exponential backoff and jitter (tenacity) -> record the outcome in the breaker. Only
:class:`~wsmanager.core.errors.Unavailable` failures are retried and counted: a
``ConcurrencyConflict`` or a bad argument is an answer from a healthy backend, and retrying it
would only hide the answer.

The breaker is a small class of our own, not a library: ``aiobreaker`` has had no release since
2021 and ``purgatory`` reads the wall clock and routes every state change through a message bus.
Ours takes an injectable monotonic clock and exposes :attr:`CircuitBreaker.state` for
``/ready`` and metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from wsmanager.core.errors import InvalidArgument, Unavailable, WsmError

__all__ = ["BreakerState", "CircuitBreaker", "Resilience", "guarded_call"]

T = TypeVar("T")
BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """closed -> open after ``failure_threshold`` consecutive failures; open -> half_open once
    ``reset_timeout`` seconds have passed; half_open lets one trial call through, whose success
    closes the breaker and whose failure opens it again (for another ``reset_timeout``).
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or reset_timeout <= 0:
            raise InvalidArgument("failure_threshold must be >= 1 and reset_timeout > 0")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._monotonic = monotonic
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self.state!r}, failures={self._failures})"

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        if self._monotonic() - self._opened_at >= self.reset_timeout:
            return "half_open"
        return "open"

    def acquire(self) -> bool:
        """Whether a call may go ahead. Pair every admitted call with exactly one of
        :meth:`succeeded`, :meth:`failed` or :meth:`released`."""
        state = self.state
        if state == "open" or (state == "half_open" and self._trial_running):
            return False
        self._trial_running = state == "half_open"
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def failed(self) -> None:
        self._failures += 1
        if self._trial_running or self._failures >= self.failure_threshold:
            self._opened_at = self._monotonic()
        self._trial_running = False

    def released(self) -> None:
        """The call ended in a way that says nothing about the backend's health."""
        self._trial_running = False


class Resilience:
    """Retry (exponential backoff with jitter) inside a circuit breaker.

    ``call`` takes a zero-argument coroutine factory that already maps backend errors to the
    wsmanager error tree; whatever it raises after the last attempt is re-raised unchanged.
    """

    def __init__(
        self,
        *,
        attempts: int = 3,
        initial_backoff: float = 0.05,
        max_backoff: float = 1.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if attempts < 1:
            raise InvalidArgument("attempts must be >= 1")
        self.attempts = attempts
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.breaker = breaker if breaker is not None else CircuitBreaker()

    def __repr__(self) -> str:
        return f"Resilience(attempts={self.attempts}, breaker={self.breaker!r})"

    @property
    def breaker_state(self) -> BreakerState:
        return self.breaker.state

    async def call(
        self, operation: Callable[[], Awaitable[T]], *, unavailable: type[Unavailable] = Unavailable
    ) -> T:
        """Run ``operation``; a call the open breaker refuses raises ``unavailable`` (e.g.
        StoreUnavailable for a state store) with the detail ``breaker="open"``."""
        if not self.breaker.acquire():
            raise unavailable("circuit breaker open: backend failing", breaker="open")
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self.attempts),
                # exponential + uniform jitter; spelled so tenacity 8 and 9 both accept it
                wait=wait_exponential(multiplier=self.initial_backoff, max=self.max_backoff)
                + wait_random(0, self.initial_backoff),
                retry=retry_if_exception_type(Unavailable),
                reraise=True,
            ):
                with attempt:
                    result = await operation()
        except Unavailable:
            self.breaker.failed()
            raise
        except WsmError:
            # Conflicts and bad arguments are answers: the backend is up.
            self.breaker.succeeded()
            raise
        except BaseException:
            self.breaker.released()  # a bug or a cancellation: no evidence either way
            raise
        self.breaker.succeeded()
        return result


async def guarded_call(
    resilience: Resilience,
    request: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    map_error: Callable[[Exception], WsmError],
    unavailable: type[Unavailable] = Unavailable,
) -> T:
    """Run ``request`` under ``resilience``, each attempt bounded by ``timeout`` seconds.

    Errors of the wsmanager tree pass through; any other exception (the SDK's, a timeout) goes
    through ``map_error``, whose Unavailable results are retried.
    """

    async def attempt() -> T:
        try:
            return await asyncio.wait_for(request(), timeout)
        except WsmError:
            raise
        except Exception as exc:
            raise map_error(exc) from exc

    return await resilience.call(attempt, unavailable=unavailable)
