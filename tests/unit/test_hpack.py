"""dataplane.hpack against the reference ``hpack`` package: each decodes what the other encodes,
over many blocks on one connection (so the dynamic tables stay in step), and malformed blocks
are COMPRESSION_ERRORs, never a crash or a wrong header list."""

from __future__ import annotations

import hpack as ref
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane import hpack

names = st.sampled_from(
    [
        b":method",
        b":path",
        b"content-type",
        b"user-agent",
        b"x-request-id",
        b"authorization",
        b"cookie",
        b"grpc-status",
        b"date",
        b"te",
        b"accept",
        b"x-custom",
    ]
) | st.binary(min_size=1, max_size=20).map(lambda b: b.hex().encode())
values = st.sampled_from([b"", b"GET", b"/", b"200", b"application/grpc", b"trailers"]) | st.binary(
    max_size=700
)
blocks = st.lists(st.lists(st.tuples(names, values), max_size=12), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(blocks, st.sampled_from([4096, 256, 0]))
def test_ours_encoded_reference_decodes(blocks: list[list[tuple[bytes, bytes]]], size: int) -> None:
    enc = hpack.Encoder()
    dec = ref.Decoder()
    dec.max_header_list_size = 1 << 30
    enc.header_table_size = size
    for block in blocks:
        assert [tuple(h) for h in dec.decode(enc.encode(block), raw=True)] == block


@settings(max_examples=200, deadline=None)
@given(blocks, st.booleans(), st.sampled_from([4096, 100]))
def test_reference_encoded_ours_decodes(
    blocks: list[list[tuple[bytes, bytes]]], huffman: bool, size: int
) -> None:
    enc = ref.Encoder()
    dec = hpack.Decoder(max_header_list_size=1 << 30)
    enc.header_table_size = size
    for block in blocks:
        assert dec.decode(enc.encode(block, huffman=huffman)) == block


@given(st.binary(max_size=64))
def test_huffman_round_trip(data: bytes) -> None:
    coded = hpack.huffman_encode(data)
    assert coded == ref.huffman.HuffmanEncoder(
        ref.huffman_constants.REQUEST_CODES, ref.huffman_constants.REQUEST_CODES_LENGTH
    ).encode(data)
    assert hpack.huffman_decode(coded) == data


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_is_a_decoding_error_or_the_same_headers(data: bytes) -> None:
    """Whatever the bytes, ours fails with an HPACK error exactly when the reference fails,
    and otherwise yields the same list."""
    theirs: list[tuple[bytes, bytes]] | None
    try:
        theirs = [tuple(h) for h in ref.Decoder().decode(data, raw=True)]  # type: ignore[misc]
    except (ref.HPACKError, IndexError, TypeError, UnicodeDecodeError):
        theirs = None
    try:
        ours: list[tuple[bytes, bytes]] | None = hpack.Decoder().decode(data)
    except hpack.HPACKError:
        ours = None
    assert ours == theirs


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xff\x80",  # truncated integer
        b"\xbf",  # index 62: empty dynamic table
        b"\x40\x03ab",  # truncated name
        b"\x40\x81\xff",  # Huffman padding of more than 7 bits
        b"\x82\x3f\xe1\x1f",  # table size update after a field
        b"\x3f\xe2\x1f",  # table size update above the 4096 announced
        b"\xff\xff\xff\xff\xff\x7f",  # integer beyond 2**28
    ],
)
def test_malformed_blocks(block: bytes) -> None:
    with pytest.raises(hpack.HPACKDecodingError):
        hpack.Decoder().decode(block)


def test_header_list_size_limit() -> None:
    dec = hpack.Decoder(max_header_list_size=100)
    enc = hpack.Encoder()
    block = enc.encode([(b"x-a", b"v" * 40), (b"x-b", b"v" * 40)])
    with pytest.raises(hpack.OversizedHeaderList) as big:
        dec.decode(block)
    assert big.value.headers == [(b"x-a", b"v" * 40)]  # the fields before the limit
    # the whole block was decoded: the dynamic table follows the encoder's, and the next
    # block (which refers to both fields by index) decodes
    again = enc.encode([(b"x-b", b"v" * 40)])
    assert len(again) < 5
    assert dec.decode(again) == [(b"x-b", b"v" * 40)]


def test_repeated_fields_are_indexed_and_credentials_never() -> None:
    enc = hpack.Encoder()
    first = enc.encode([(b"x-custom", b"abc"), (b"authorization", b"secret")])
    again = enc.encode([(b"x-custom", b"abc"), (b"authorization", b"secret")])
    assert again[:1] == b"\xbe"  # dynamic index 62: one byte
    assert b"secret" in again  # never indexed: sent literally each time
    assert again[1] & 0xF0 == 0x10  # ... with the never-indexed representation
    assert len(first) > len(again)
