"""Shared pieces of the data plane: the HTTP/1.1 proxy engine, breaker, stats and wire formats."""
