"""The lexical scan of an HTTP/1.1 head that the readers' quick path starts from.

``scan(data, names, wanted, max_fields)`` reads the head that begins ``data`` and says where
its parts are, without making an object per line: the reader then looks only at the lines it
must (see dataplane/h1reader.py, ``RequestReader._quick``). It returns None (the reader leaves
the message to llhttp) unless

- the head is whole in ``data``: a start line, header lines and the empty line, each ended by
  CRLF;
- every byte of it is HTAB or printable ASCII (0x20-0x7E) but the CRLFs: no other control
  byte, no lone CR or LF, no byte >= 0x80;
- each header line is a name of token characters (RFC 9110 §5.6.2), a colon, and its value (no
  white space before the colon, no continuation line);
- the start line is not empty and there are at most ``max_fields`` header lines.

Otherwise it returns a list of ints: ``[head_end, line_end, fields]`` (the offset after the
empty line, where the body begins; the offset of the start line's CRLF; the number of header
lines), then five for each header line the reader must look at, in order:
``place, start, name_len, value_at, line_len``. ``place`` is the line's index among the header
lines, negated minus one (``-1 - place``) when its name is not ``names[place]`` (the name at
its place in the connection's last message, compared byte for byte); ``start`` is the line's
offset in ``data``, and the others count from it: its name is ``name_len`` bytes long (the
colon follows), its value begins at ``value_at`` (the white space after the colon skipped) and
its CRLF at ``line_len`` (white space before it is kept, as llhttp keeps it). (Lengths rather
than offsets: CPython makes an object for every int above 256, and these are mostly below.)
A line is listed when its name is not the one at its place, or when ``wanted[place]`` is not
0; every other line is one the reader passes through as it is.

This module is the reference; ``dataplane/_h1scan.c`` is the same function in C, which the
compiled build uses (``scan`` below is it when it is built). tests/unit/test_h1scan.py holds
the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["NATIVE", "scan", "scan_py"]

# HTAB and printable ASCII: the bytes a line may hold.
_LINE_BYTES: Final = frozenset([9, *range(0x20, 0x7F)])
_TOKEN: Final = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)


def _line_end(data: bytes, pos: int) -> int:
    """Where the line from ``pos`` ends (its CRLF), or -1 if a byte before it is not one a
    line may hold, or no CRLF ends it."""
    n = len(data)
    while pos < n and data[pos] in _LINE_BYTES:
        pos += 1
    if pos + 1 < n and data[pos] == 0x0D and data[pos + 1] == 0x0A:
        return pos
    return -1


def scan_py(
    data: bytes, names: list[bytes], wanted: bytearray, max_fields: int
) -> list[int] | None:
    """The scan described in the module docstring, in Python."""
    line_end = _line_end(data, 0)
    if line_end <= 0:
        return None
    found = [0, line_end, 0]
    n = len(data)
    pos = line_end + 2
    place = 0
    while True:
        if pos + 1 >= n:
            return None
        if data[pos] == 0x0D:
            if data[pos + 1] != 0x0A:
                return None
            break  # the empty line
        if place >= max_fields:
            return None
        colon = pos
        while colon < n and data[colon] in _TOKEN:
            colon += 1
        if colon == pos or colon >= n or data[colon] != 0x3A:
            return None
        value = colon + 1
        while value < n and (data[value] == 0x20 or data[value] == 0x09):
            value += 1
        end = _line_end(data, value)
        if end < 0:
            return None
        same = place < len(names) and names[place] == data[pos:colon]
        if not same:
            found += (-1 - place, pos, colon - pos, value - pos, end - pos)
        elif place < len(wanted) and wanted[place]:
            found += (place, pos, colon - pos, value - pos, end - pos)
        place += 1
        pos = end + 2
    found[0] = pos + 2
    found[2] = place
    return found


_Scan = Callable[[bytes, list[bytes], bytearray, int], "list[int] | None"]
_native: _Scan | None
try:
    from ._h1scan import scan as _native
except ImportError:  # the interpreted build: no C extension
    _native = None

#: The scan the readers call: the C one when it is built, else the reference.
scan: Final[_Scan] = scan_py if _native is None else _native
#: Whether ``scan`` is the C one.
NATIVE: Final = _native is not None
