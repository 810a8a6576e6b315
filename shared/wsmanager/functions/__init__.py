"""The function command handlers: stateless clients of the holders' REST API (brief §2, §5).

``functions/<name>/main.py`` are thin functions-framework entry points; everything they do is
here: :mod:`.decoding` (CloudEvents in binary/structured mode, plain JSON), :mod:`.commands`
(the command table and data models), :mod:`.dedupe` (idempotency records), :mod:`.routing`
(live holder by load, owner by record, reclaim of dead owners), :mod:`.client` (the pooled
holder session), :mod:`.replies` (CloudEvent or JSON answers), :mod:`.runtime` (``deps()``),
:mod:`.handlers` (:func:`handle`) and :mod:`.asgi` (mounting).
"""

from __future__ import annotations

from wsmanager.functions.asgi import create_app, serve
from wsmanager.functions.commands import FUNCTIONS
from wsmanager.functions.decoding import Incoming
from wsmanager.functions.handlers import handle
from wsmanager.functions.replies import Reply
from wsmanager.functions.runtime import Runtime, close_deps, deps, install

__all__ = [
    "FUNCTIONS",
    "Incoming",
    "Reply",
    "Runtime",
    "close_deps",
    "create_app",
    "deps",
    "handle",
    "install",
    "serve",
]
