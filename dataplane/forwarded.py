"""The ``Forwarded`` header shim of Knative's queue-proxy (``pkg/queue/forwarded_shim.go``).

Builds an RFC 7239 ``Forwarded`` value from ``X-Forwarded-For/-Host/-Proto`` when the request
has no ``Forwarded`` header. Quirks kept on purpose: a node containing ``:`` is taken for IPv6 and
written ``"[node]"``; empty X-Forwarded-For nodes still produce ``for=`` elements.
"""

from __future__ import annotations

__all__ = ["forwarded_value"]


def forwarded_value(xff: bytes | None, xfh: bytes | None, xfp: bytes | None) -> bytes | None:
    """The ``Forwarded`` value to add, or None when there is nothing to add.

    Arguments are the first values of X-Forwarded-For/-Host/-Proto (None when absent); like
    Knative, values are trimmed and an empty value counts as absent.
    """
    xff = xff.strip() if xff else b""
    xfh = xfh.strip() if xfh else b""
    xfp = xfp.strip() if xfp else b""
    if not (xff or xfh or xfp):
        return None
    nodes = []
    for n in xff.split(b","):
        n = n.strip()
        nodes.append(b'"[' + n + b']"' if b":" in n else n)
    pairs = []
    if nodes[0]:
        pairs.append(b"for=" + nodes[0])
    if xfh:
        pairs.append(b"host=" + xfh)
    if xfp:
        pairs.append(b"proto=" + xfp)
    elements = [b";".join(pairs)]
    elements.extend(b"for=" + n for n in nodes[1:])
    return b", ".join(elements) or None
