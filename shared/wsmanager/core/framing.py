"""Framing: frame types from content types, the correlation prefix, and the JSON payload codec.

Pure functions over bytes and strings (brief §5 "Messages on the wire", reference §2.4):

* ``text/*`` and ``application/json`` travel as Text frames, everything else as Binary frames.
* A correlated Send prefixes the payload with a 16-byte id (``uuid.UUID.bytes``, RFC 4122 byte
  order; the shell draws it, this module never makes random numbers). Text frames cannot carry
  raw id bytes (RFC 6455 §8.1: a Text frame must be valid UTF-8, and strict servers such as the
  npm ``ws`` package close the connection with 1007 on anything else), so a Text frame carries
  the id's 32 lowercase hex digits instead (``uuid.UUID.hex``). A reply matches when it starts
  with the same 32 hex digits (text) or the same 16 bytes (binary).
* Matching is one dict lookup per candidate key: :func:`reply_keys` names at most two keys per
  frame, so a frame is matched in O(1) whatever the number of pending sends.
* Content-type answers are memoised (a bounded LRU): the publishing hot path asks per frame.
* REST/JSON payloads are UTF-8 text for text content types and base64 for the rest.
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools

from wsmanager.core.errors import InvalidArgument

__all__ = [
    "BINARY_CONTENT_TYPE",
    "ID_BYTES",
    "ID_HEX_CHARS",
    "TEXT_CONTENT_TYPE",
    "FrameType",
    "correlated_frame",
    "correlation_key",
    "decode_payload",
    "encode_payload",
    "frame_type",
    "inbound_content_type",
    "is_text_content_type",
    "media_type",
    "reply_keys",
    "strip_reply",
    "utf8",
]

ID_BYTES = 16
ID_HEX_CHARS = 32
TEXT_CONTENT_TYPE = "text/plain"
BINARY_CONTENT_TYPE = "application/octet-stream"
_HEX = frozenset("0123456789abcdef")
_MAX_CONTENT_TYPE = 255


class FrameType(enum.Enum):
    TEXT = "text"
    BINARY = "binary"


@functools.lru_cache(maxsize=512)
def media_type(content_type: str) -> str:
    """The bare, lower-cased media type (``"Text/Plain; charset=utf-8"`` -> ``"text/plain"``).

    Raises:
        InvalidArgument: not ``type/subtype``, or absurdly long.
    """
    if not isinstance(content_type, str) or len(content_type) > _MAX_CONTENT_TYPE:
        raise InvalidArgument("content_type must be a string of at most 255 characters")
    bare = content_type.split(";", 1)[0].strip().lower()
    kind, slash, sub = bare.partition("/")
    if not slash or not kind or not sub or any(c.isspace() for c in bare):
        raise InvalidArgument(f"content_type {content_type!r} is not a media type (type/subtype)")
    return bare


@functools.lru_cache(maxsize=512)
def is_text_content_type(content_type: str) -> bool:
    """``text/*`` and ``application/json`` are text (reference §2.4); anything else is binary."""
    bare = media_type(content_type)
    return bare.startswith("text/") or bare == "application/json"


def frame_type(content_type: str) -> FrameType:
    return FrameType.TEXT if is_text_content_type(content_type) else FrameType.BINARY


def inbound_content_type(is_text: bool, connection_content_type: str) -> str:
    """The content type published for an inbound frame.

    The frame's kind decides; the connection's own content type is kept when it is of the same
    kind (a JSON feed stays ``application/json``), else the generic one is used.
    """
    if is_text_content_type(connection_content_type) == is_text:
        return connection_content_type
    return TEXT_CONTENT_TYPE if is_text else BINARY_CONTENT_TYPE


def correlation_key(correlation_id: bytes, text: bool) -> str | bytes:
    """The key a pending Send waits under: 32 hex digits (text) or the 16 raw bytes (binary).

    Raises:
        InvalidArgument: the id is not 16 bytes.
    """
    if len(correlation_id) != ID_BYTES:
        raise InvalidArgument("a correlation id is 16 bytes (uuid.UUID.bytes)")
    return correlation_id.hex() if text else bytes(correlation_id)


def utf8(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"a text content type needs valid UTF-8 (invalid byte at offset {exc.start})"
        ) from None


def reply_keys(frame: bytes, is_text: bool) -> tuple[str | bytes, ...]:
    """The keys under which ``frame`` could answer a pending Send (at most two; O(1) lookups).

    A Text frame can answer a text Send (32 hex digits). A Binary frame can answer a binary
    Send (16 bytes) or a text Send whose reply the server sent as Binary (32 ASCII hex digits).
    Frames arrive as bytes whatever their type (the receive loop does not decode Text frames).
    """
    keys: tuple[str | bytes, ...] = ()
    if not is_text and len(frame) >= ID_BYTES:
        keys = (bytes(frame[:ID_BYTES]),)
    if len(frame) >= ID_HEX_CHARS:
        head = bytes(frame[:ID_HEX_CHARS]).decode("latin-1")
        if _HEX.issuperset(head):
            keys += (head,)
    return keys


def strip_reply(frame: bytes, key: str | bytes) -> bytes:
    """The reply's payload: the frame without the prefix it matched on."""
    return bytes(frame[len(key) :])


def correlated_frame(correlation_id: bytes, payload: bytes, text: bool) -> bytes:
    """The frame a correlated Send writes, as bytes (a Text frame's bytes are UTF-8).

    Raises:
        InvalidArgument: a Text frame's payload is not valid UTF-8 (RFC 6455 §8.1).
    """
    key = correlation_key(correlation_id, text)
    if isinstance(key, str):
        utf8(payload)  # validate only: the socket takes the bytes as they are
        return key.encode("ascii") + payload
    return key + payload


def encode_payload(payload: bytes, content_type: str) -> str:
    """A payload as it travels in JSON: UTF-8 text for text content types, else base64.

    Raises:
        InvalidArgument: a text content type whose payload is not valid UTF-8.
    """
    if is_text_content_type(content_type):
        return utf8(payload)
    return base64.b64encode(payload).decode("ascii")


def decode_payload(message: str, content_type: str) -> bytes:
    """The bytes of a JSON ``message`` field (the inverse of :func:`encode_payload`).

    Raises:
        InvalidArgument: bad base64 for a binary content type, or text that has no UTF-8 form.
    """
    if not isinstance(message, str):
        raise InvalidArgument("message must be a string (text, or base64 for binary types)")
    if is_text_content_type(content_type):
        try:
            return message.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgument("message is not encodable as UTF-8") from None
    try:
        return base64.b64decode(message.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidArgument(
            f"message must be base64 for content type {media_type(content_type)!r}"
        ) from None
