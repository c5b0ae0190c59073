"""Unit tests for dataplane.forwarded: Knative's Forwarded header shim (forwarded_shim.go)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataplane.forwarded import forwarded_value

# (name, xff, xfh, xfp, want) from knative/serving pkg/queue/forwarded_shim_test.go; the
# "existing fwd" case is the caller's job (it only calls us when there is no Forwarded header).
KNATIVE_CASES = [
    ("multiple xff", "127.0.0.1, ::1", "h", "p", 'for=127.0.0.1;host=h;proto=p, for="[::1]"'),
    ("single xff", "127.0.0.1", "h", "p", "for=127.0.0.1;host=h;proto=p"),
    ("multiple xff, no xfh, no xfp", "127.0.0.1, ::1", "", "", 'for=127.0.0.1, for="[::1]"'),
    ("multiple xff, no xfh", "127.0.0.1, ::1", "", "p", 'for=127.0.0.1;proto=p, for="[::1]"'),
    ("multiple xff, no xfp", "127.0.0.1, ::1", "h", "", 'for=127.0.0.1;host=h, for="[::1]"'),
    ("only xfh", "", "h", "", "host=h"),
    ("only xfp", "", "", "p", "proto=p"),
    ("only xfp and xfh", "", "h", "p", "host=h;proto=p"),
]


def _b(v: str) -> bytes | None:
    """Knative's test only sets a header when its value is non-empty."""
    return v.encode() if v else None


@pytest.mark.parametrize(
    ("xff", "xfh", "xfp", "want"),
    [c[1:] for c in KNATIVE_CASES],
    ids=[c[0] for c in KNATIVE_CASES],
)
def test_knative_cases(xff: str, xfh: str, xfp: str, want: str) -> None:
    assert forwarded_value(_b(xff), _b(xfh), _b(xfp)) == want.encode()


@pytest.mark.parametrize(
    ("xff", "xfh", "xfp", "want"),
    [c[1:] for c in KNATIVE_CASES],
    ids=[c[0] for c in KNATIVE_CASES],
)
def test_knative_cases_empty_headers_count_as_absent(
    xff: str, xfh: str, xfp: str, want: str
) -> None:
    assert forwarded_value(xff.encode(), xfh.encode(), xfp.encode()) == want.encode()


class TestEdgeCases:
    def test_nothing_present(self) -> None:
        assert forwarded_value(None, None, None) is None

    @pytest.mark.parametrize("blank", [b"", b" ", b"\t", b"  \t "])
    def test_blank_values_are_absent(self, blank: bytes) -> None:
        assert forwarded_value(blank, blank, blank) is None
        assert forwarded_value(blank, b"h", blank) == b"host=h"
        assert forwarded_value(b"1.2.3.4", blank, blank) == b"for=1.2.3.4"

    def test_values_are_trimmed(self) -> None:
        got = forwarded_value(b"  10.0.0.1 ,  ::1  ", b"  h  ", b"\tp ")
        assert got == b'for=10.0.0.1;host=h;proto=p, for="[::1]"'

    def test_empty_xff_nodes(self) -> None:
        # Go: strings.Join(["", "for=", "for=", "for="], ", ")
        assert forwarded_value(b",,,", None, None) == b", for=, for=, for="

    def test_empty_first_node_drops_semicolon_pairs(self) -> None:
        assert forwarded_value(b", 1.2.3.4", b"h", b"p") == b"host=h;proto=p, for=1.2.3.4"

    def test_single_ipv6(self) -> None:
        assert forwarded_value(b"2001:db8::1", None, b"https") == b'for="[2001:db8::1]";proto=https'

    def test_ipv6_with_port_quirk(self) -> None:
        # anything with a colon is wrapped, even host:port
        assert forwarded_value(b"1.2.3.4:80", None, None) == b'for="[1.2.3.4:80]"'

    def test_many_nodes(self) -> None:
        got = forwarded_value(b"a,b,c,d", None, None)
        assert got == b"for=a, for=b, for=c, for=d"


# --------------------------------------------------------------------------- Go oracle


def go_shim(xff: str, xfh: str, xfp: str) -> str:
    """A direct transcription of ForwardedShimHandler's value (empty: no header is set)."""
    xff, xfh, xfp = xff.strip(" \t\r\n\v\f"), xfh.strip(" \t\r\n\v\f"), xfp.strip(" \t\r\n\v\f")
    nodes = xff.split(",")
    for i, node in enumerate(nodes):
        node = node.strip(" \t\r\n\v\f")
        if ":" in node:
            node = f'"[{node}]"'
        nodes[i] = node
    pairs = []
    if nodes and nodes[0] != "":
        pairs.append("for=" + nodes[0])
    if xfh != "":
        pairs.append("host=" + xfh)
    if xfp != "":
        pairs.append("proto=" + xfp)
    elements = [";".join(pairs)]
    elements += ["for=" + n for n in nodes[1:]]
    return ", ".join(elements)


_piece = st.text(alphabet=" \t,:;.=ab19f", max_size=12)


@settings(max_examples=250, deadline=None)
@given(xff=_piece, xfh=_piece, xfp=_piece)
def test_matches_go_algorithm(xff: str, xfh: str, xfp: str) -> None:
    want = go_shim(xff, xfh, xfp)
    got = forwarded_value(xff.encode(), xfh.encode(), xfp.encode())
    assert got == (want.encode() if want else None)
