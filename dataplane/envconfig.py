"""Reading settings from the environment with one clear error per bad setting.

Each reader raises :class:`ConfigError` naming the variable, the bad value and what is
expected; entry points print it as one line and exit non-zero.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["ConfigError", "env_bool", "env_duration", "env_float", "env_int", "env_str"]


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


_MISSING = object()


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str:
    """A string variable; ``default=None`` makes it required (an empty value is allowed)."""
    v = env.get(name)
    if v is None:
        if default is None:
            raise ConfigError(f"{name}: required environment variable is not set")
        return default
    return v


def env_int(
    env: Mapping[str, str],
    name: str,
    default: int | None = None,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer variable (``default=None``: required)."""
    raw = env.get(name)
    if raw is None or (raw.strip() == "" and default is not None):
        if default is None:
            raise ConfigError(f"{name}: required environment variable is not set")
        return default
    try:
        v = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not an integer") from None
    if minimum is not None and v < minimum:
        raise ConfigError(f"{name}: {v} is below the minimum {minimum}")
    if maximum is not None and v > maximum:
        raise ConfigError(f"{name}: {v} is above the maximum {maximum}")
    return v


def env_float(
    env: Mapping[str, str], name: str, default: float, *, minimum: float | None = None
) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        v = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}: {raw!r} is not a finite number")
    if minimum is not None and v < minimum:
        raise ConfigError(f"{name}: {v:g} is below the minimum {minimum:g}")
    return v


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def env_bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    """A boolean with Go's ``strconv.ParseBool`` spellings; empty means the default."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    raw = raw.strip()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name}: {raw!r} is not a boolean (use true or false)")


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float:
    """A Go ``time.ParseDuration`` string (``300ms``, ``1m30s``) in seconds; raises ValueError."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    sign = 1.0
    if s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    total = 0.0
    i = 0
    n = len(s)
    if n == 0:
        raise ValueError(f"invalid duration {text!r}")
    while i < n:
        j = i
        while j < n and (s[j].isdigit() or s[j] == "."):
            j += 1
        if j == i:
            raise ValueError(f"invalid duration {text!r}")
        num = float(s[i:j])
        k = j
        while k < n and not (s[k].isdigit() or s[k] == "."):
            k += 1
        unit = s[j:k]
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {unit!r} in duration {text!r}")
        total += num * _UNITS[unit]
        i = k
    return sign * total


def env_duration(env: Mapping[str, str], name: str, default: float) -> float:
    """A Go duration (``200ms``) or a bare number of seconds."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw) if raw.strip().replace(".", "", 1).isdigit() else parse_duration(raw)
    except ValueError as e:
        raise ConfigError(f"{name}: {raw!r} is not a duration ({e})") from None
