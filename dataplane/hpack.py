"""HPACK (RFC 7541): the header compression of HTTP/2, lean and compiled with the engine (mypyc).

The ``hpack`` package under ``h2`` spent a fifth of the queue-proxy's CPU under h2c load (a
cProfile of h2load through the queue-proxy: logging calls per header, a ``HeaderTuple`` per
field, a table search that scans the dynamic table). This is the same codec with the same
interface as far as ``h2`` uses it (``Encoder.encode``, ``Decoder.decode``, the table-size
attributes), so it drops into ``h2``'s connection (``install``) and into our own frame layer.

Choices:

- The encoder never Huffman-codes: it costs CPU per byte on both sides to save a few bytes on
  loopback or the pod network; it indexes every field except credentials (never indexed) and
  long values, so a repeated field costs one byte.
- The decoder caches short Huffman-decoded strings (bounded in entries and in bytes): a proxy
  sees the same few dozen values (user agents, content types, ``date`` for a second) over and
  over.
- Errors are :class:`HPACKDecodingError` (COMPRESSION_ERROR for the connection) and
  :class:`OversizedHeaderList` (the peer ignored SETTINGS_MAX_HEADER_LIST_SIZE).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "STATIC_TABLE",
    "Decoder",
    "Encoder",
    "HPACKDecodingError",
    "HPACKError",
    "OversizedHeaderList",
    "huffman_decode",
    "huffman_encode",
]


class HPACKError(Exception):
    """A header block we cannot decode."""


class HPACKDecodingError(HPACKError):
    """A malformed header block (a connection error of type COMPRESSION_ERROR)."""


class OversizedHeaderList(HPACKError):
    """The decoded header list exceeds the size we announced. The whole block was decoded (the
    dynamic table stays in step with the peer's); ``headers`` holds the fields before the
    limit."""

    def __init__(self, message: str, headers: list[tuple[bytes, bytes]]) -> None:
        super().__init__(message)
        self.headers = headers


# RFC 7541 Appendix A.
STATIC_TABLE: Final[list[tuple[bytes, bytes]]] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
]
STATIC_LEN: Final = 61
DEFAULT_TABLE_SIZE: Final = 4096
ENTRY_OVERHEAD: Final = 32  # RFC 7541 §4.1

# RFC 7541 Appendix B gives a canonical Huffman code: the code lengths of the 257 symbols
# (256 = EOS) determine the codes, built below.
_HUFFMAN_LENGTHS: Final = bytes.fromhex(
    "0d171c1c1c1c1c1c1c181e1c1c1e1c1c1c1c1c1c1c1c1e1c1c1c1c1c1c1c1c1c060a0a0c0d06080b0a0a080b"
    "080606060505050606060606060607080f060c0a0d0607070707070707070707070707070707070707070707"
    "0807080d130d0e060f05060506050606060507070606060506070605050607070707070f0b0e0d1c14161414"
    "1616161716171717171718171818161718171717171516171617171816151416161717151716161815161717"
    "151516151716171714161616171616171a1a1413161716191a1a1a1b1b1a181913151a1b1b1a1b1815151a1a"
    "1c1b1b1b14181415161515171616191918181a171a1b1a1a1b1b1b1b1b1c1b1b1b1b1b1a1e"
)
_EOS: Final = 256
_MAX_CODE_LEN: Final = 30


def _build_huffman() -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(code per symbol, first code per length, symbol offset per length, count per length,
    symbols in canonical order)."""
    order = sorted(range(257), key=lambda s: (_HUFFMAN_LENGTHS[s], s))
    codes = [0] * 257
    first = [0] * (_MAX_CODE_LEN + 2)
    offset = [0] * (_MAX_CODE_LEN + 2)
    count = [0] * (_MAX_CODE_LEN + 2)
    code = -1
    prev = _HUFFMAN_LENGTHS[order[0]]
    for i, sym in enumerate(order):
        length = _HUFFMAN_LENGTHS[sym]
        code = 0 if i == 0 else (code + 1) << (length - prev)
        prev = length
        codes[sym] = code
        if count[length] == 0:
            first[length] = code
            offset[length] = i
        count[length] += 1
    return codes, first, offset, count, order


_CODES, _FIRST, _OFFSET, _COUNT, _SYMS = _build_huffman()


def huffman_encode(data: bytes) -> bytes:
    """``data`` Huffman-coded, padded with the EOS prefix (all ones)."""
    out = bytearray()
    acc = 0
    bits = 0
    codes = _CODES
    lengths = _HUFFMAN_LENGTHS
    for b in data:
        acc = (acc << lengths[b]) | codes[b]
        bits += lengths[b]
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
        acc &= (1 << bits) - 1
    if bits:
        out.append(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) & 0xFF)
    return bytes(out)


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded string (RFC 7541 §5.2); padding must be at most 7 one bits."""
    out = bytearray()
    first = _FIRST
    offset = _OFFSET
    count = _COUNT
    syms = _SYMS
    code = 0
    length = 0
    for b in data:
        shift = 7
        while shift >= 0:
            code = (code << 1) | ((b >> shift) & 1)
            length += 1
            shift -= 1
            if length >= 5:
                c = code - first[length]
                if 0 <= c < count[length]:
                    sym = syms[offset[length] + c]
                    if sym == _EOS:
                        raise HPACKDecodingError("EOS symbol in a Huffman-coded string")
                    out.append(sym)
                    code = 0
                    length = 0
                elif length >= _MAX_CODE_LEN:
                    raise HPACKDecodingError("invalid Huffman code")
    if length > 7 or code != (1 << length) - 1:
        raise HPACKDecodingError("invalid Huffman padding")
    return bytes(out)


def _encode_int(out: bytearray, first: int, value: int, prefix: int) -> None:
    """Append ``value`` with a ``prefix``-bit prefix; ``first`` holds the byte's high bits."""
    limit = (1 << prefix) - 1
    if value < limit:
        out.append(first | value)
        return
    out.append(first | limit)
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


_STATIC_PAIRS: Final[dict[tuple[bytes, bytes], int]] = {}
_STATIC_NAMES: Final[dict[bytes, int]] = {}
for _i, (_n, _v) in enumerate(STATIC_TABLE):
    _STATIC_PAIRS.setdefault((_n, _v), _i + 1)
    _STATIC_NAMES.setdefault(_n, _i + 1)

# Never indexed (RFC 7541 §7.1.3): credentials, which an intermediary must not expose to
# compression-ratio attacks, and must forward with the same representation.
_NEVER_INDEX: Final = frozenset(
    (b"authorization", b"proxy-authorization", b"cookie", b"set-cookie")
)
_MAX_INDEXED_VALUE: Final = 512  # longer values are sent as literals, not added to the table


class Encoder:
    """Header list -> header block, with a dynamic table of the peer's announced size."""

    def __init__(self) -> None:
        self.entries: list[tuple[bytes, bytes]] = []  # oldest first
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE
        self.inserted = 0  # entries ever added; entry n (1-based) is at index inserted - n + 62
        self.pairs: dict[tuple[bytes, bytes], int] = {}
        self.names: dict[bytes, int] = {}
        self.pending_size: int = -1  # a table size update to announce in the next block
        # Header lists encoded while the table stayed as it is now: a proxy sends the same
        # few lists over and over (a gRPC call's request head, response head and trailers).
        self.generation = 0  # bumped at every change of the table
        self.blocks: dict[tuple[tuple[bytes, bytes], ...], tuple[int, bytes]] = {}

    @property
    def header_table_size(self) -> int:
        return self.max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        # We never use more than the default, whatever the peer allows.
        value = min(value, DEFAULT_TABLE_SIZE)
        if value != self.max_size:
            self.max_size = value
            self.pending_size = value
            self.generation += 1
            self._evict(0)

    def _evict(self, room: int) -> None:
        entries = self.entries
        n = 0
        size = self.size
        while entries and size + room > self.max_size and n < len(entries):
            name, value = entries[n]
            size -= len(name) + len(value) + ENTRY_OVERHEAD
            number = self.inserted - len(entries) + n + 1
            if self.pairs.get((name, value)) == number:
                del self.pairs[(name, value)]
            if self.names.get(name) == number:
                del self.names[name]
            n += 1
        if n:
            del entries[:n]
        self.size = size

    def _dynamic_index(self, number: int) -> int:
        """The index of entry ``number``, or 0 when it was evicted."""
        if number <= self.inserted - len(self.entries):
            return 0
        return STATIC_LEN + self.inserted - number + 1

    def encode(self, headers: list[tuple[bytes, bytes]], huffman: bool = False) -> bytes:
        """Encode a list of (name, value) byte pairs (``huffman`` is accepted and ignored: see
        the module's notes)."""
        gen = self.generation
        blocks = self.blocks
        # A list too large to encode to a short block (a bearer token, a cookie) is not looked
        # up (nor copied to a key): hashing it would cost more than the lookup could save.
        raw = 0
        if len(headers) <= _BLOCK_CACHE_FIELDS:
            for header in headers:
                raw += len(header[0]) + len(header[1])
        else:
            raw = _BLOCK_CACHE_RAW + 1
        key: tuple[tuple[bytes, bytes], ...] | None = None
        if self.pending_size < 0 and raw <= _BLOCK_CACHE_RAW:
            key = tuple(headers)
            hit = blocks.get(key)
            if hit is not None and hit[0] == gen:
                return hit[1]
        out = bytearray()
        if self.pending_size >= 0:
            _encode_int(out, 0x20, self.pending_size, 5)
            self.pending_size = -1
        for header in headers:
            name: bytes = header[0]
            value: bytes = header[1]
            self.add(out, name, value)
        block = bytes(out)
        if key is not None and self.generation == gen and len(block) <= _BLOCK_CACHE_LEN:
            # Only blocks of indices (every field already in a table) and short literals: the
            # same list gives the same bytes until the table changes.
            if len(blocks) >= _BLOCK_CACHE_MAX:
                blocks.clear()
            blocks[key] = (gen, block)
        return block

    def add(self, out: bytearray, name: bytes, value: bytes) -> None:
        """Append one field's representation to ``out``."""
        pair = (name, value)
        idx = _STATIC_PAIRS.get(pair, 0)
        if idx:
            _encode_int(out, 0x80, idx, 7)
            return
        number = self.pairs.get(pair, 0)
        if number:
            idx = self._dynamic_index(number)
            if idx:
                _encode_int(out, 0x80, idx, 7)
                return
        name_idx = _STATIC_NAMES.get(name, 0)
        if not name_idx:
            number = self.names.get(name, 0)
            if number:
                name_idx = self._dynamic_index(number)
        if name in _NEVER_INDEX:
            _encode_int(out, 0x10, name_idx, 4)
            if not name_idx:
                _encode_int(out, 0, len(name), 7)
                out += name
            _encode_int(out, 0, len(value), 7)
            out += value
            return
        entry = len(name) + len(value) + ENTRY_OVERHEAD
        if len(value) > _MAX_INDEXED_VALUE or entry > self.max_size:
            _encode_int(out, 0x00, name_idx, 4)  # literal without indexing
        else:
            _encode_int(out, 0x40, name_idx, 6)  # literal with incremental indexing
            self.generation += 1
            self._evict(entry)
            self.entries.append(pair)
            self.size += entry
            self.inserted += 1
            self.pairs[pair] = self.inserted
            self.names[name] = self.inserted
        if not name_idx:
            _encode_int(out, 0, len(name), 7)
            out += name
        _encode_int(out, 0, len(value), 7)
        out += value


# Whole header blocks kept per encoder and per decoder (see Encoder.blocks, Decoder.blocks): at
# most this many, each at most this long (so at most a few KiB per connection).
_BLOCK_CACHE_MAX: Final = 32
_BLOCK_CACHE_LEN: Final = 64
# The encoder looks a list up only when it is this small (fields, and bytes of names and values).
_BLOCK_CACHE_FIELDS: Final = 32
_BLOCK_CACHE_RAW: Final = 1024
_CACHE_MAX: Final = 256  # Huffman-decoded strings kept per decoder
# Only strings this short (Huffman-coded length) are cached: at most 256 x (64 + 102) bytes per
# connection. Caching any string let a client park 26 MB per connection in distinct long values.
_CACHE_STRING_MAX: Final = 64


class Decoder:
    """Header block -> header list, enforcing our table size and header list size."""

    def __init__(self, max_header_list_size: int = 64 * 1024) -> None:
        self.entries: list[tuple[bytes, bytes]] = []  # newest last
        self.size = 0
        self.max_size = DEFAULT_TABLE_SIZE  # set by the peer's table size updates
        self.max_allowed_table_size = DEFAULT_TABLE_SIZE  # what we announced
        self.max_header_list_size = max_header_list_size
        self.cache: dict[bytes, bytes] = {}
        # Blocks that left the table as it was, with what they decoded to: a client sends the
        # same few heads over and over, all indices once their fields are in the table.
        self.generation = 0  # bumped at every change of the table
        self.blocks: dict[bytes, tuple[int, int, list[tuple[bytes, bytes]]]] = {}

    @property
    def header_table_size(self) -> int:
        return self.max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self.max_size = value
        self.generation += 1
        self._evict(0)

    def _evict(self, room: int) -> None:
        entries = self.entries
        n = 0
        size = self.size
        while n < len(entries) and size + room > self.max_size:
            name, value = entries[n]
            size -= len(name) + len(value) + ENTRY_OVERHEAD
            n += 1
        if n:
            del entries[:n]
        self.size = size

    def _entry(self, idx: int) -> tuple[bytes, bytes]:
        if idx <= 0:
            raise HPACKDecodingError("index 0 in a header block")
        if idx <= STATIC_LEN:
            return STATIC_TABLE[idx - 1]
        pos = len(self.entries) - (idx - STATIC_LEN)
        if pos < 0:
            raise HPACKDecodingError(f"header table index {idx} out of range")
        return self.entries[pos]

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        end = len(data)
        if pos >= end:
            raise HPACKDecodingError("truncated header block")
        huff = data[pos] & 0x80
        n, pos = _decode_int(data, pos, 7)
        if pos + n > end:
            raise HPACKDecodingError("truncated header string")
        raw = data[pos : pos + n]
        if not huff:
            return raw, pos + n
        if n > _CACHE_STRING_MAX:
            return huffman_decode(raw), pos + n
        cache = self.cache
        s = cache.get(raw)
        if s is None:
            s = huffman_decode(raw)
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[raw] = s
        return s, pos + n

    def decode(self, data: bytes, raw: bool = True) -> list[tuple[bytes, bytes]]:
        """Decode one header block (``raw`` is accepted for ``h2``: values stay bytes).

        The list may be shared with earlier and later calls (a block seen before, decoded
        against the same table): callers must not modify it."""
        limit = self.max_header_list_size
        gen = self.generation
        if len(data) <= _BLOCK_CACHE_LEN:  # (only short blocks are kept: see below)
            hit = self.blocks.get(data)
            if hit is not None and hit[0] == gen and hit[1] <= limit:
                return hit[2]
        headers: list[tuple[bytes, bytes]] = []
        pos = 0
        end = len(data)
        total = 0
        while pos < end:
            b = data[pos]
            if b & 0x80:  # indexed field
                idx, pos = _decode_int(data, pos, 7)
                pair = self._entry(idx)
            elif b & 0xE0 == 0x20:  # dynamic table size update
                if headers:
                    raise HPACKDecodingError("table size update after the first field")
                size, pos = _decode_int(data, pos, 5)
                if size > self.max_allowed_table_size:
                    raise HPACKDecodingError(
                        f"table size update to {size} above the {self.max_allowed_table_size} "
                        "we allow"
                    )
                self.max_size = size
                self.generation += 1
                self._evict(0)
                continue
            else:
                index = b & 0xC0 == 0x40
                idx, pos = _decode_int(data, pos, 6 if index else 4)
                if idx:
                    name = self._entry(idx)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                pair = (name, value)
                if index:
                    self.generation += 1
                    entry = len(name) + len(value) + ENTRY_OVERHEAD
                    if entry > self.max_size:
                        self.entries.clear()
                        self.size = 0
                    else:
                        self._evict(entry)
                        self.entries.append(pair)
                        self.size += entry
            total += len(pair[0]) + len(pair[1]) + ENTRY_OVERHEAD
            if total <= limit:
                headers.append(pair)
            # past the limit: decoded on, so that the table follows the peer's, and dropped
        if total > limit:
            raise OversizedHeaderList(f"header list larger than {limit} bytes", headers)
        if self.generation == gen and end <= _BLOCK_CACHE_LEN:
            blocks = self.blocks
            if len(blocks) >= _BLOCK_CACHE_MAX:
                blocks.clear()
            blocks[data] = (gen, total, headers)
        return headers


def _decode_int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """(value, position after it) of an integer with a ``prefix``-bit prefix at ``pos``."""
    limit = (1 << prefix) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise HPACKDecodingError("truncated integer in a header block")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 28:  # no field or index we accept needs more than 2**28
            raise HPACKDecodingError("integer too large in a header block")
