"""Request headers the benchmarks send besides Host."""

from __future__ import annotations

# What a browser's request carries once an ingress (Envoy, as Kourier and Istio run it) has
# added its own: 13 headers with Host, where wrk alone sends only Host.
BROWSER_HEADERS = (
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36",
    ),
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-US,en;q=0.9"),
    ("Accept-Encoding", "gzip, deflate, br"),
    ("Cookie", "session=3f2a9c1e7b5d4a8f0c6e; theme=dark"),
    ("Referer", "https://hello.example.com/"),
    ("Sec-Fetch-Mode", "navigate"),
    ("X-Forwarded-For", "203.0.113.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Request-Id", "6c1f7d4e-0a9b-4f7e-8d7e-2b7c6d5e4f3a"),
    ("X-Envoy-Expected-Rq-Timeout-Ms", "300000"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
)
