"""Framing: content type -> frame type, the correlation prefix, the JSON payload codec."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsmanager.core.errors import InvalidArgument
from wsmanager.core.framing import (
    ID_BYTES,
    ID_HEX_CHARS,
    FrameType,
    correlated_frame,
    correlation_key,
    decode_payload,
    encode_payload,
    frame_type,
    inbound_content_type,
    is_text_content_type,
    media_type,
    reply_keys,
    strip_reply,
)

ID = uuid.UUID("12345678-9abc-def0-1234-56789abcdef0")


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/plain", FrameType.TEXT),
        ("text/csv", FrameType.TEXT),
        ("Text/Plain; charset=utf-8", FrameType.TEXT),
        ("application/json", FrameType.TEXT),
        ("application/json; charset=utf-8", FrameType.TEXT),
        ("application/octet-stream", FrameType.BINARY),
        ("application/protobuf", FrameType.BINARY),
        ("application/ld+json", FrameType.BINARY),  # only application/json itself is text
        ("image/png", FrameType.BINARY),
    ],
)
def test_frame_type_follows_the_content_type(content_type: str, expected: FrameType) -> None:
    assert frame_type(content_type) is expected
    assert is_text_content_type(content_type) is (expected is FrameType.TEXT)


@pytest.mark.parametrize("bad", ["", "text", "/plain", "text/", "te xt/plain", "x" * 300])
def test_a_malformed_content_type_is_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        media_type(bad)


def test_media_type_drops_parameters_and_case() -> None:
    assert media_type(" Application/JSON ; charset=UTF-8") == "application/json"


def test_binary_correlation_carries_the_uuid_bytes_in_rfc4122_order() -> None:
    frame = correlated_frame(ID.bytes, b"\x00payload", text=False)
    assert frame[:ID_BYTES] == ID.bytes == bytes.fromhex("123456789abcdef0123456789abcdef0")
    assert frame[ID_BYTES:] == b"\x00payload"
    assert correlation_key(ID.bytes, text=False) == ID.bytes


def test_text_correlation_carries_32_lowercase_hex_digits() -> None:
    frame = correlated_frame(ID.bytes, "héllo".encode(), text=True)
    assert frame[:ID_HEX_CHARS] == ID.hex.encode()
    assert frame.decode("utf-8") == ID.hex + "héllo"  # a valid UTF-8 Text frame
    assert correlation_key(ID.bytes, text=True) == ID.hex


def test_a_text_frame_payload_must_be_utf8() -> None:
    with pytest.raises(InvalidArgument, match="UTF-8"):
        correlated_frame(ID.bytes, b"\xff\xfe", text=True)


def test_a_correlation_id_is_16_bytes() -> None:
    with pytest.raises(InvalidArgument):
        correlation_key(b"short", text=False)


def test_reply_keys_of_a_text_reply_are_its_hex_prefix_only() -> None:
    reply = (ID.hex + "pong").encode()
    assert reply_keys(reply, is_text=True) == (ID.hex,)
    assert strip_reply(reply, ID.hex) == b"pong"


def test_reply_keys_of_a_binary_reply_cover_both_prefix_forms() -> None:
    binary_reply = ID.bytes + b"pong"
    assert reply_keys(binary_reply, is_text=False)[0] == ID.bytes
    assert strip_reply(binary_reply, ID.bytes) == b"pong"
    # a server that answers a text Send with a Binary frame still matches
    hex_as_binary = ID.hex.encode() + b"pong"
    assert ID.hex in reply_keys(hex_as_binary, is_text=False)


@pytest.mark.parametrize(
    "frame",
    [b"", b"short", ("Z" * 32 + "x").encode(), (ID.hex.upper() + "x").encode()],
)
def test_frames_without_a_prefix_match_nothing_textual(frame: bytes) -> None:
    assert reply_keys(frame, is_text=True) == ()


def test_inbound_content_type_keeps_the_connections_own_when_kinds_agree() -> None:
    assert inbound_content_type(True, "application/json") == "application/json"
    assert inbound_content_type(False, "application/json") == "application/octet-stream"
    assert inbound_content_type(True, "application/x-protobuf") == "text/plain"
    assert inbound_content_type(False, "application/x-protobuf") == "application/x-protobuf"


def test_payload_codec_uses_text_for_text_types_and_base64_otherwise() -> None:
    assert encode_payload("héllo".encode(), "text/plain") == "héllo"
    assert encode_payload(b"\x00\xff", "application/octet-stream") == "AP8="
    assert decode_payload("AP8=", "application/octet-stream") == b"\x00\xff"
    assert decode_payload('{"a":1}', "application/json") == b'{"a":1}'


@pytest.mark.parametrize("bad", ["not base64!", "AP8", "AP8=\n", "é"])
def test_bad_base64_is_invalid_argument(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="base64"):
        decode_payload(bad, "application/octet-stream")


def test_invalid_utf8_for_a_text_type_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        encode_payload(b"\xc3\x28", "text/plain")
    with pytest.raises(InvalidArgument):
        decode_payload("\ud800", "text/plain")  # a lone surrogate has no UTF-8 form
    with pytest.raises(InvalidArgument):
        decode_payload(b"bytes", "text/plain")  # type: ignore[arg-type]


@given(st.binary(max_size=256))
def test_binary_payloads_round_trip(payload: bytes) -> None:
    encoded = encode_payload(payload, "application/octet-stream")
    assert base64.b64decode(encoded) == payload
    assert decode_payload(encoded, "application/octet-stream") == payload


@given(st.text(max_size=256))
def test_text_payloads_round_trip(text: str) -> None:
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError:
        return  # surrogates: not text that a Text frame can carry
    assert decode_payload(encode_payload(payload, "text/plain"), "text/plain") == payload


@given(st.binary(min_size=16, max_size=16), st.binary(max_size=64), st.booleans())
def test_any_correlated_frame_matches_its_own_key(cid: bytes, payload: bytes, text: bool) -> None:
    if text:
        payload = payload.decode("latin-1").encode("utf-8")  # make it valid UTF-8
    frame = correlated_frame(cid, payload, text)
    key = correlation_key(cid, text)
    assert key in reply_keys(frame, is_text=text)
    assert strip_reply(frame, key) == payload
