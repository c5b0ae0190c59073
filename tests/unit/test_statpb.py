"""Unit tests for dataplane.statpb, checked byte for byte against the official protobuf runtime.

The official message classes are built at test time from a FileDescriptorProto equivalent to
Knative's ``pkg/autoscaler/metrics/stat.proto``, so no protoc or generated code is needed.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError as PbDecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.statpb import (
    DecodeError,
    Stat,
    WireStatMessage,
    decode_stat,
    decode_wire_stat_messages,
    encode_stat,
    encode_wire_stat_messages,
)

SCRAPER_MAX_BYTES = 6 * 10 + 256 + 20  # pkg/autoscaler/metrics/http_scrape_client.go
MAX_FIELD_NUMBER = 2**29 - 1

_F = descriptor_pb2.FieldDescriptorProto
_DOUBLE_FIELDS = (
    "average_concurrent_requests",
    "average_proxied_concurrent_requests",
    "request_count",
    "proxied_request_count",
    "process_uptime",
)


def _build_classes() -> tuple[Any, Any, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="knative_dataplane_test/stat.proto", package="metrics", syntax="proto3"
    )
    stat = fdp.message_type.add(name="Stat")
    stat.field.add(name="pod_name", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    for i, name in enumerate(_DOUBLE_FIELDS, start=2):
        stat.field.add(name=name, number=i, type=_F.TYPE_DOUBLE, label=_F.LABEL_OPTIONAL)
    stat.field.add(name="timestamp", number=7, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL)
    wire = fdp.message_type.add(name="WireStatMessage")
    wire.field.add(name="namespace", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    wire.field.add(name="name", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    wire.field.add(
        name="stat",
        number=3,
        type=_F.TYPE_MESSAGE,
        type_name=".metrics.Stat",
        label=_F.LABEL_OPTIONAL,
    )
    msgs = fdp.message_type.add(name="WireStatMessages")
    msgs.field.add(
        name="messages",
        number=1,
        type=_F.TYPE_MESSAGE,
        type_name=".metrics.WireStatMessage",
        label=_F.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    fd = pool.Add(fdp)
    return (
        message_factory.GetMessageClass(fd.message_types_by_name["Stat"]),
        message_factory.GetMessageClass(fd.message_types_by_name["WireStatMessage"]),
        message_factory.GetMessageClass(fd.message_types_by_name["WireStatMessages"]),
    )


PbStat, PbWire, PbWires = _build_classes()


def to_pb(s: Stat) -> Any:
    return PbStat(
        pod_name=s.pod_name,
        average_concurrent_requests=s.average_concurrent_requests,
        average_proxied_concurrent_requests=s.average_proxied_concurrent_requests,
        request_count=s.request_count,
        proxied_request_count=s.proxied_request_count,
        process_uptime=s.process_uptime,
        timestamp=s.timestamp,
    )


def from_pb(m: Any) -> Stat:
    return Stat(
        pod_name=m.pod_name,
        average_concurrent_requests=m.average_concurrent_requests,
        average_proxied_concurrent_requests=m.average_proxied_concurrent_requests,
        request_count=m.request_count,
        proxied_request_count=m.proxied_request_count,
        process_uptime=m.process_uptime,
        timestamp=m.timestamp,
    )


def wires_to_pb(msgs: list[WireStatMessage]) -> Any:
    out = PbWires()
    for m in msgs:
        w = out.messages.add(namespace=m.namespace, name=m.name)
        if m.stat is not None:
            w.stat.CopyFrom(to_pb(m.stat))
            w.stat.SetInParent()
    return out


def wires_from_pb(pb: Any) -> list[WireStatMessage]:
    return [
        WireStatMessage(
            namespace=w.namespace,
            name=w.name,
            stat=from_pb(w.stat) if w.HasField("stat") else None,
        )
        for w in pb.messages
    ]


REALISTIC_POD = "hello-world-00001-deployment-7d9c8b5f6d-x2k9q"

FIXED_STATS = [
    Stat(),
    Stat(pod_name="p"),
    Stat(pod_name=REALISTIC_POD, average_concurrent_requests=1.0, request_count=2.0),
    Stat(
        pod_name=REALISTIC_POD,
        average_concurrent_requests=3.25,
        average_proxied_concurrent_requests=1.5,
        request_count=100.0,
        proxied_request_count=40.0,
        process_uptime=12345.678,
        timestamp=1_700_000_000,
    ),
    Stat(timestamp=-1),
    Stat(timestamp=-(2**63)),
    Stat(timestamp=2**63 - 1),
    Stat(timestamp=1),
    Stat(timestamp=127),
    Stat(timestamp=128),
    Stat(pod_name="ünïcødé-☃-𝄞", process_uptime=-1.0),
    Stat(average_concurrent_requests=5e-324, request_count=1.7976931348623157e308),
    Stat(pod_name="x" * 300),
]


class TestFixed:
    @pytest.mark.parametrize("s", FIXED_STATS)
    def test_bytes_match_official(self, s: Stat) -> None:
        assert encode_stat(s) == to_pb(s).SerializeToString()

    @pytest.mark.parametrize("s", FIXED_STATS)
    def test_official_parses_ours(self, s: Stat) -> None:
        m = PbStat()
        m.ParseFromString(encode_stat(s))
        assert m == to_pb(s)
        assert from_pb(m) == s

    @pytest.mark.parametrize("s", FIXED_STATS)
    def test_we_parse_official(self, s: Stat) -> None:
        assert decode_stat(to_pb(s).SerializeToString()) == s

    def test_empty_stat_is_empty_bytes(self) -> None:
        assert encode_stat(Stat()) == b""
        assert decode_stat(b"") == Stat()

    def test_zero_values_omitted(self) -> None:
        assert encode_stat(Stat(pod_name="a")) == b"\x0a\x01a"
        assert encode_stat(Stat(request_count=1.0)) == b"\x21" + struct.pack("<d", 1.0)
        assert encode_stat(Stat(timestamp=300)) == b"\x38\xac\x02"

    def test_negative_zero_is_omitted_like_gogo(self) -> None:
        # gogo's generated Marshal tests `!= 0`, which -0.0 fails
        assert encode_stat(Stat(average_concurrent_requests=-0.0)) == b""

    def test_nan_and_inf_survive(self) -> None:
        s = Stat(average_concurrent_requests=math.nan, request_count=math.inf)
        data = encode_stat(s)
        m = PbStat()
        m.ParseFromString(data)
        assert math.isnan(m.average_concurrent_requests)
        assert m.request_count == math.inf
        back = decode_stat(data)
        assert math.isnan(back.average_concurrent_requests)
        assert back.request_count == math.inf

    def test_negative_timestamp_is_ten_byte_varint(self) -> None:
        data = encode_stat(Stat(timestamp=-1))
        assert data == b"\x38" + b"\xff" * 9 + b"\x01"

    def test_realistic_pod_within_scraper_limit(self) -> None:
        worst = Stat(
            pod_name=REALISTIC_POD,
            average_concurrent_requests=123.456,
            average_proxied_concurrent_requests=78.9,
            request_count=1000.5,
            proxied_request_count=999.25,
            process_uptime=86400.125,
            timestamp=-1,  # the longest possible varint
        )
        data = encode_stat(worst)
        assert len(data) <= SCRAPER_MAX_BYTES
        assert len(data) == len(to_pb(worst).SerializeToString())

    def test_max_pod_name_for_scraper(self) -> None:
        # a 253-byte pod name (DNS subdomain maximum) still fits with every field set
        s = Stat(
            pod_name="p" * 253,
            average_concurrent_requests=1.5,
            average_proxied_concurrent_requests=1.5,
            request_count=1.5,
            proxied_request_count=1.5,
            process_uptime=1.5,
            timestamp=-1,
        )
        assert len(encode_stat(s)) <= SCRAPER_MAX_BYTES


class TestDecode:
    def test_unknown_fields_skipped(self) -> None:
        s = Stat(pod_name="pod", request_count=3.0, timestamp=9)
        unknown = (
            b"\x40\x96\x01"  # field 8, varint
            + b"\x49"
            + b"\x00" * 8  # field 9, fixed64
            + b"\x52\x03abc"  # field 10, length-delimited
            + b"\x5d\x01\x02\x03\x04"  # field 11, fixed32
            + b"\xf8\xff\xff\xff\x0f\x01"  # field 2^29-1 (max), varint
        )
        data = unknown[:3] + encode_stat(s) + unknown[3:]
        ref = PbStat()
        ref.ParseFromString(data)
        assert from_pb(ref) == s
        assert decode_stat(data) == s

    def test_known_field_with_wrong_wire_type_is_skipped(self) -> None:
        # pod_name (1) sent as a varint, request_count (4) as a fixed32
        data = b"\x08\x05" + b"\x25\x00\x00\x80\x3f" + encode_stat(Stat(timestamp=3))
        ref = PbStat()
        ref.ParseFromString(data)
        assert from_pb(ref) == Stat(timestamp=3)
        assert decode_stat(data) == Stat(timestamp=3)

    def test_last_value_wins(self) -> None:
        data = encode_stat(Stat(pod_name="a", timestamp=1)) + encode_stat(
            Stat(pod_name="b", timestamp=2)
        )
        ref = PbStat()
        ref.ParseFromString(data)
        assert decode_stat(data) == from_pb(ref) == Stat(pod_name="b", timestamp=2)

    def test_all_truncations(self) -> None:
        full = to_pb(FIXED_STATS[3]).SerializeToString()
        for n in range(len(full)):
            prefix = full[:n]
            ref = PbStat()
            try:
                ref.ParseFromString(prefix)
            except PbDecodeError:
                with pytest.raises(DecodeError):
                    decode_stat(prefix)
            else:
                assert decode_stat(prefix) == from_pb(ref)

    @pytest.mark.parametrize(
        "data",
        [
            b"\x0a",  # key without length
            b"\x0a\x05abc",  # length beyond the end
            b"\x11\x00\x00",  # short fixed64
            b"\x38",  # key without varint
            b"\x38\x80",  # unterminated varint
            b"\x38" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
            b"\x5d\x00",  # short fixed32
            b"\x00\x01",  # field number 0
            b"\x0f",  # wire type 7
            b"\x0a\x02\xc3\x28",  # invalid UTF-8 in pod_name
        ],
    )
    def test_malformed_raises(self, data: bytes) -> None:
        with pytest.raises(PbDecodeError):
            PbStat().ParseFromString(data)
        with pytest.raises(DecodeError):
            decode_stat(data)

    def test_decode_error_is_value_error(self) -> None:
        assert issubclass(DecodeError, ValueError)

    def test_overlong_ten_byte_varint_wraps_to_int64(self) -> None:
        data = b"\x38" + b"\xff" * 9 + b"\x7f"
        ref = PbStat()
        ref.ParseFromString(data)
        assert ref.timestamp == -1
        assert decode_stat(data).timestamp == ref.timestamp

    def test_field_number_above_maximum_rejected(self) -> None:
        data = b"\x80\x80\x80\x80\x10\x00"  # key varint 2**32: field 2**29, varint
        with pytest.raises(PbDecodeError):
            PbStat().ParseFromString(data)
        with pytest.raises(DecodeError):
            decode_stat(data)

    def test_field_number_maximum_accepted(self) -> None:
        data = b"\xf8\xff\xff\xff\x0f\x00"  # field 2**29-1, varint
        PbStat().ParseFromString(data)
        assert decode_stat(data) == Stat()

    def test_unknown_group_skipped(self) -> None:
        data = b"\x6b" + b"\x08\x01" + b"\x6c" + encode_stat(Stat(pod_name="p"))  # group 13
        ref = PbStat()
        ref.ParseFromString(data)
        assert from_pb(ref) == Stat(pod_name="p")
        assert decode_stat(data) == Stat(pod_name="p")


class TestWire:
    def test_round_trip_fixed(self) -> None:
        msgs = [
            WireStatMessage("ns", "rev-1", Stat(pod_name="a", request_count=2.0)),
            WireStatMessage("ns", "rev-2", None),
            WireStatMessage("", "", Stat()),
            WireStatMessage(),
        ]
        data = encode_wire_stat_messages(msgs)
        assert data == wires_to_pb(msgs).SerializeToString()
        ref = PbWires()
        ref.ParseFromString(data)
        assert wires_from_pb(ref) == msgs
        assert decode_wire_stat_messages(data) == msgs

    def test_empty(self) -> None:
        assert encode_wire_stat_messages([]) == b""
        assert decode_wire_stat_messages(b"") == []

    def test_unknown_fields_in_wire_messages(self) -> None:
        inner = b"\x0a\x02ns" + b"\x20\x07" + b"\x12\x01r"  # field 4 varint in the middle
        data = b"\x10\x01" + b"\x0a" + bytes((len(inner),)) + inner
        ref = PbWires()
        ref.ParseFromString(data)
        assert decode_wire_stat_messages(data) == wires_from_pb(ref)
        assert decode_wire_stat_messages(data) == [WireStatMessage("ns", "r", None)]

    def test_truncated_wire(self) -> None:
        data = encode_wire_stat_messages([WireStatMessage("ns", "n", Stat(pod_name="pod"))])
        for n in range(1, len(data)):
            with pytest.raises(DecodeError):
                decode_wire_stat_messages(data[:n])


# --------------------------------------------------------------------------- properties

_finite = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: not (x == 0 and math.copysign(1.0, x) < 0)  # -0.0: gogo omits it, upb does not
)
_int64 = st.integers(-(2**63), 2**63 - 1)

stats = st.builds(
    Stat,
    pod_name=st.text(max_size=80),
    average_concurrent_requests=_finite,
    average_proxied_concurrent_requests=_finite,
    request_count=_finite,
    proxied_request_count=_finite,
    process_uptime=_finite,
    timestamp=_int64,
)


@settings(max_examples=150, deadline=None)
@given(stats)
def test_encode_matches_official(s: Stat) -> None:
    data = encode_stat(s)
    assert data == to_pb(s).SerializeToString()
    ref = PbStat()
    ref.ParseFromString(data)
    assert from_pb(ref) == s


@settings(max_examples=150, deadline=None)
@given(stats)
def test_decode_official(s: Stat) -> None:
    assert decode_stat(to_pb(s).SerializeToString()) == s


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.builds(
            WireStatMessage,
            namespace=st.text(max_size=20),
            name=st.text(max_size=20),
            stat=st.none() | stats,
        ),
        max_size=5,
    )
)
def test_wire_messages_match_official(msgs: list[WireStatMessage]) -> None:
    data = encode_wire_stat_messages(msgs)
    assert data == wires_to_pb(msgs).SerializeToString()
    assert decode_wire_stat_messages(data) == msgs
    ref = PbWires()
    ref.ParseFromString(data)
    assert wires_from_pb(ref) == msgs


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=40))
def test_random_bytes_agree_with_official(data: bytes) -> None:
    ref = PbStat()
    try:
        ref.ParseFromString(data)
    except PbDecodeError:
        with pytest.raises(DecodeError):
            decode_stat(data)
        return
    got = decode_stat(data)
    want = from_pb(ref)
    for f in ("pod_name", "timestamp", *_DOUBLE_FIELDS):
        a, b = getattr(got, f), getattr(want, f)
        if isinstance(a, float) and math.isnan(a):
            assert math.isnan(b)
        else:
            assert a == b, f
