"""Knative's autoscaling ``Stat`` protobuf and ``WireStatMessages``, encoded by hand.

``pkg/autoscaler/metrics/stat.proto`` (package ``metrics``, proto3)::

    message Stat {
      string pod_name = 1; double average_concurrent_requests = 2;
      double average_proxied_concurrent_requests = 3; double request_count = 4;
      double proxied_request_count = 5; double process_uptime = 6; int64 timestamp = 7;
    }
    message WireStatMessage { string namespace = 1; string name = 2; Stat stat = 3; }
    message WireStatMessages { repeated WireStatMessage messages = 1; }

Seven fields do not justify the protobuf runtime in a sidecar; tests check these bytes against
the official library. Zero values are omitted as proto3 does; decoding skips unknown fields.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "DecodeError",
    "Stat",
    "WireStatMessage",
    "decode_stat",
    "decode_wire_stat_messages",
    "encode_stat",
    "encode_varint",
    "encode_wire_stat_messages",
]

_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from


class DecodeError(ValueError):
    """Malformed protobuf input."""


@dataclass(slots=True)
class Stat:
    pod_name: str = ""
    average_concurrent_requests: float = 0.0
    average_proxied_concurrent_requests: float = 0.0
    request_count: float = 0.0
    proxied_request_count: float = 0.0
    process_uptime: float = 0.0
    timestamp: int = 0


@dataclass(slots=True)
class WireStatMessage:
    namespace: str = ""
    name: str = ""
    stat: Stat | None = field(default=None)


def encode_varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + encode_varint(len(payload)) + payload


_DOUBLE_TAGS = (0x11, 0x19, 0x21, 0x29, 0x31)  # fields 2..6, wire type 1


def encode_stat(s: Stat) -> bytes:
    parts: list[bytes] = []
    if s.pod_name:
        parts.append(_len_field(0x0A, s.pod_name.encode()))
    values = (
        s.average_concurrent_requests,
        s.average_proxied_concurrent_requests,
        s.request_count,
        s.proxied_request_count,
        s.process_uptime,
    )
    for tag, v in zip(_DOUBLE_TAGS, values, strict=True):
        if v:  # omitted when zero, like Knative's gogo-generated marshaller
            parts.append(bytes((tag,)) + _pack_double(v))
    if s.timestamp:
        parts.append(b"\x38" + encode_varint(s.timestamp))
    return b"".join(parts)


def encode_wire_stat_messages(msgs: list[WireStatMessage]) -> bytes:
    out: list[bytes] = []
    for m in msgs:
        inner: list[bytes] = []
        if m.namespace:
            inner.append(_len_field(0x0A, m.namespace.encode()))
        if m.name:
            inner.append(_len_field(0x12, m.name.encode()))
        if m.stat is not None:
            inner.append(_len_field(0x1A, encode_stat(m.stat)))
        out.append(_len_field(0x0A, b"".join(inner)))
    return b"".join(out)


# -- decoding --------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, int, object]]:
    """Split a message into (field number, wire type, value) triples."""
    pos = 0
    end = len(buf)
    out: list[tuple[int, int, object]] = []
    while pos < end:
        key, pos = _read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0 or num > 0x1FFFFFFF:
            raise DecodeError(f"invalid field number {num}")
        value: object
        if wt == 0:
            value, pos = _read_varint(buf, pos)
        elif wt == 1:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            value = _unpack_double(buf, pos)[0]
            pos += 8
        elif wt == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > end:
                raise DecodeError("truncated length-delimited field")
            value = buf[pos : pos + n]
            pos += n
        elif wt == 5:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            value = None
            pos += 4
        elif wt == 3:
            pos = _skip_group(buf, pos, num)
            continue
        else:
            raise DecodeError(f"unsupported wire type {wt}")
        out.append((num, wt, value))
    return out


def _skip_group(buf: bytes, pos: int, num: int) -> int:
    """Skip an (unknown, deprecated) group up to its matching end tag."""
    end = len(buf)
    while True:
        if pos >= end:
            raise DecodeError("truncated group")
        key, pos = _read_varint(buf, pos)
        n, wt = key >> 3, key & 7
        if n == 0 or n > 0x1FFFFFFF:
            raise DecodeError(f"invalid field number {n}")
        if wt == 4:
            if n != num:
                raise DecodeError("mismatched end-group tag")
            return pos
        if wt == 0:
            _, pos = _read_varint(buf, pos)
        elif wt == 1:
            pos += 8
        elif wt == 2:
            ln, pos = _read_varint(buf, pos)
            pos += ln
        elif wt == 3:
            pos = _skip_group(buf, pos, n)
        elif wt == 5:
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wt}")
        if pos > end:
            raise DecodeError("truncated group")


def _str(v: object) -> str:
    assert isinstance(v, bytes)
    try:
        return v.decode()
    except UnicodeDecodeError as e:
        raise DecodeError("invalid UTF-8 in string field") from e


def decode_stat(buf: bytes) -> Stat:
    s = Stat()
    for num, wt, v in _fields(buf):
        if num == 1 and wt == 2:
            s.pod_name = _str(v)
        elif 2 <= num <= 6 and wt == 1:
            assert isinstance(v, float)
            if num == 2:
                s.average_concurrent_requests = v
            elif num == 3:
                s.average_proxied_concurrent_requests = v
            elif num == 4:
                s.request_count = v
            elif num == 5:
                s.proxied_request_count = v
            else:
                s.process_uptime = v
        elif num == 7 and wt == 0:
            assert isinstance(v, int)
            s.timestamp = v - (1 << 64) if v >= 1 << 63 else v
    return s


def decode_wire_stat_messages(buf: bytes) -> list[WireStatMessage]:
    out: list[WireStatMessage] = []
    for num, wt, v in _fields(buf):
        if num != 1 or wt != 2:
            continue
        assert isinstance(v, bytes)
        m = WireStatMessage()
        for n2, w2, v2 in _fields(v):
            if n2 == 1 and w2 == 2:
                m.namespace = _str(v2)
            elif n2 == 2 and w2 == 2:
                m.name = _str(v2)
            elif n2 == 3 and w2 == 2:
                assert isinstance(v2, bytes)
                m.stat = decode_stat(v2)
        out.append(m)
    return out
