"""The self-fencing gate (R8): one check every send and every publish passes right before I/O.

``OwnershipService.fenced()`` says whether my lease has lapsed *now*. That is not enough on its
own: once anything renews the lease again (my lease keeper, or a heartbeat loop elsewhere), the
lapse is over as far as ``fenced()`` can tell, yet records may have been taken over during it. So
the gate closes as soon as it sees a lapse, either directly (``fenced()``) or after the fact (two
consecutive renewals further apart than the renew deadline), and stays closed until the owner
has re-read its records and dropped the lost ones (:meth:`FenceGate.confirmed`, called by the
lease keeper after ``OwnershipService.reconfirm``).

While the gate is closed, sends fail with :class:`SelfFenced` and publishing waits; frames of
connections found lost are dropped, the rest are published once the gate reopens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from wsmanager.ownership import OwnershipService

__all__ = ["FenceGate"]


class FenceGate:
    """May this holder act on its sockets right now (R8)? Starts closed: a fresh process must
    confirm its records before acting."""

    def __init__(self, ownership: OwnershipService) -> None:
        self._ownership = ownership
        self._seen_renewal: float | None = None
        self._needs_reconfirm = True
        self._open = asyncio.Event()
        #: Called (never raising into the gate) each time an open gate closes: a self-fence
        #: event (R8), counted in ``/metrics``.
        self.on_fence: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"FenceGate(open={not self._needs_reconfirm})"

    @property
    def needs_reconfirm(self) -> bool:
        return self._needs_reconfirm

    def may_act(self) -> bool:
        """R8: True only while the lease is fresh *and* no lapse went unconfirmed."""
        ownership = self._ownership
        if ownership.fenced():
            self._close()
            return False
        last = ownership.last_renewal_at
        if last != self._seen_renewal:
            deadline = ownership.policy.effective_renew_deadline
            if self._seen_renewal is not None and last is not None:
                if last - self._seen_renewal > deadline:
                    self._close()  # renewed again, but after a lapse nobody looked at
            self._seen_renewal = last
        return not self._needs_reconfirm

    def _close(self) -> None:
        was_open = not self._needs_reconfirm
        self._needs_reconfirm = True
        self._open.clear()
        if was_open and self.on_fence is not None:
            try:
                self.on_fence()
            except Exception:  # a counter never breaks the gate
                pass

    def confirmed(self, renewal_at: float | None) -> None:
        """The owner re-read its records as of ``renewal_at`` and dropped the lost ones."""
        self._seen_renewal = renewal_at
        if not self._ownership.fenced():
            self._needs_reconfirm = False
            self._open.set()

    async def wait_open(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the gate to open; the current verdict."""
        if self.may_act():
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._open.wait()
        except TimeoutError:
            pass
        return self.may_act()
