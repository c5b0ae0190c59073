"""Test applications (upstreams) used by the integration tests."""
