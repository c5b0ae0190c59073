"""The ``Forwarded`` header shim of Knative's queue-proxy (``pkg/queue/forwarded_shim.go``).

Builds an RFC 7239 ``Forwarded`` value from ``X-Forwarded-For/-Host/-Proto`` when the request
has no ``Forwarded`` header. Quirks kept on purpose: a node containing ``:`` is taken for IPv6 and
written ``"[node]"``; empty X-Forwarded-For nodes still produce ``for=`` elements.
"""

from __future__ import annotations

__all__ = ["forwarded_value"]


def _node(n: bytes) -> bytes:
    n = n.strip()
    # (find, not ``b":" in n``: CPython 3.11 first tries the operand as an integer, and raising
    # and clearing that TypeError costs about 2,000 instructions a test)
    return b'"[' + n + b']"' if n.find(b":") >= 0 else n


def forwarded_value(xff: bytes | None, xfh: bytes | None, xfp: bytes | None) -> bytes | None:
    """The ``Forwarded`` value to add, or None when there is nothing to add.

    Arguments are the first values of X-Forwarded-For/-Host/-Proto (None when absent); like
    Knative, values are trimmed and an empty value counts as absent. The first element joins
    the first node's ``for=`` with ``host=`` and ``proto=``; each further node is an element of
    its own (and an empty first element still leaves its ``", "``).
    """
    xff = xff.strip() if xff else b""
    xfh = xfh.strip() if xfh else b""
    xfp = xfp.strip() if xfp else b""
    if not (xff or xfh or xfp):
        return None
    more: list[bytes] | None = None
    if xff.find(b",") < 0:  # one node: the usual case (one proxy in front)
        first = _node(xff)
    else:
        nodes = xff.split(b",")
        first = _node(nodes[0])
        more = nodes[1:]
    value = b"for=" + first if first else b""
    if xfh:
        value = value + b";host=" + xfh if value else b"host=" + xfh
    if xfp:
        value = value + b";proto=" + xfp if value else b"proto=" + xfp
    if more is not None:
        for n in more:
            value += b", for=" + _node(n)
    return value or None
