"""Whole header blocks remembered by the HPACK encoder and decoder (a gRPC channel sends the same
few heads over and over): a remembered block is used only while the dynamic table is as it was,
and the result is what the reference ``hpack`` library gives."""

from __future__ import annotations

import hpack as ref

from dataplane import hpack

HEAD = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/bench.Echo/Unary"),
    (b":authority", b"hello.default.example.com"),
    (b"te", b"trailers"),
    (b"content-type", b"application/grpc"),
]


def test_repeated_block_decodes_from_memory_while_the_table_holds() -> None:
    enc = ref.Encoder()
    dec = hpack.Decoder()
    first = enc.encode(HEAD)  # literals: they change the table, so they are not remembered
    assert dec.decode(first) == HEAD
    assert first not in dec.blocks
    again = enc.encode(HEAD)  # indices only now
    got = dec.decode(again)
    assert got == HEAD
    assert again in dec.blocks
    assert dec.decode(again) is got  # the same (read-only) list, not decoded again


def test_remembered_block_is_not_used_after_the_table_changed() -> None:
    enc = ref.Encoder()
    dec = hpack.Decoder()
    dec.decode(enc.encode([(b"x-a", b"1")]))
    block = enc.encode([(b"x-a", b"1")])  # one index: 62, the newest entry
    assert dec.decode(block) == [(b"x-a", b"1")]
    # A new entry shifts the indices: the same bytes now name the newer field.
    dec.decode(enc.encode([(b"x-b", b"2")]))
    assert dec.decode(block) == [(b"x-b", b"2")]
    # A table size update in a block changes the table too: to 0, it empties it.
    assert dec.decode(b"\x20") == []
    try:
        dec.decode(block)
    except hpack.HPACKDecodingError:
        pass
    else:
        raise AssertionError("an index into the emptied table was served from memory")


def test_remembered_block_respects_a_smaller_header_list_limit() -> None:
    enc = ref.Encoder()
    dec = hpack.Decoder()
    dec.decode(enc.encode(HEAD))
    block = enc.encode(HEAD)
    dec.decode(block)
    dec.max_header_list_size = 100
    try:
        dec.decode(block)
    except hpack.OversizedHeaderList as e:
        assert e.headers  # the fields before the limit
    else:
        raise AssertionError("a block over the new limit was served from memory")


def test_long_blocks_are_not_remembered() -> None:
    dec = hpack.Decoder()
    enc = hpack.Encoder()
    fields = [(b"x-long", b"v" * 600)]  # too long to index: a literal every time
    for _ in range(3):
        block = enc.encode(fields)
        assert dec.decode(block) == fields
    assert not dec.blocks
    assert not enc.blocks


def test_encoder_repeats_a_list_only_while_its_table_holds() -> None:
    enc = hpack.Encoder()
    dec = ref.Decoder()
    first = enc.encode(HEAD)
    assert dec.decode(first, raw=True) == HEAD
    second = enc.encode(HEAD)
    assert len(second) == len(HEAD)  # one index per field
    assert enc.encode(HEAD) is second  # remembered
    assert dec.decode(second, raw=True) == HEAD
    # A new field is added to the table: the indices of the old ones shift by one.
    assert dec.decode(enc.encode([(b"x-new", b"1")]), raw=True) == [(b"x-new", b"1")]
    third = enc.encode(HEAD)
    assert third != second
    assert dec.decode(third, raw=True) == HEAD


def test_encoder_announces_a_table_size_change_before_using_memory() -> None:
    enc = hpack.Encoder()
    dec = ref.Decoder()
    dec.decode(enc.encode(HEAD), raw=True)
    dec.decode(enc.encode(HEAD), raw=True)
    enc.header_table_size = 0  # the peer shrank the table: the update goes in the next block
    block = enc.encode(HEAD)
    assert block[:1] == b"\x20"  # size update to 0 first
    assert dec.decode(block, raw=True) == HEAD
    assert dec.decode(enc.encode(HEAD), raw=True) == HEAD
