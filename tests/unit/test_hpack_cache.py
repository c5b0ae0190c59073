"""The HPACK decoder's Huffman cache stays small whatever strings a client sends (the reference
``hpack`` encoder Huffman-codes every string)."""

from __future__ import annotations

import hpack as ref

from dataplane import hpack


def _cached_bytes(dec: hpack.Decoder) -> int:
    return sum(len(k) + len(v) for k, v in dec.cache.items())


def test_long_distinct_strings_are_decoded_not_cached() -> None:
    enc = ref.Encoder()
    dec = hpack.Decoder()
    dec.max_header_list_size = 1 << 20
    for i in range(40):
        # 40 distinct 8 KiB values (too long to index: each block carries its string).
        value = b"%d-" % i + b"v" * 8192
        block = enc.encode([(b"x-long", value)], huffman=True)
        assert dec.decode(block) == [(b"x-long", value)]
    # Entries are bounded (256) and so are their sizes: no long string is kept (it was 4 MB).
    assert _cached_bytes(dec) <= 64 * 1024
    assert all(len(k) <= 64 for k in dec.cache)


def test_short_strings_are_still_cached() -> None:
    enc = ref.Encoder()
    dec = hpack.Decoder()
    fields = [(b"user-agent", b"grpc-python/1.60"), (b"content-type", b"application/grpc")]
    enc.header_table_size = 0  # nothing indexed: the strings come each time, Huffman-coded
    for _ in range(3):
        assert dec.decode(enc.encode(fields, huffman=True)) == fields
    assert b"grpc-python/1.60" in dec.cache.values()
