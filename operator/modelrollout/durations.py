"""Kubernetes-style duration strings (`30s`, `5m`, `2h`, `1h30m`, `500ms`) to and from timedeltas.

The accepted form is a subset of Go's time.ParseDuration, so the API server's CEL `duration()` reads every
string this module accepts the same way.
"""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def parse_duration(text: str) -> timedelta:
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 2h or 1h30m")
    millis = sum(int(amount) * _UNIT_MS[unit] for amount, unit in _PART.findall(text))
    return timedelta(milliseconds=millis)


def format_duration(value: timedelta) -> str:
    """The shortest canonical form: 5400s -> `1h30m`, 0 -> `0s`, 1.5s -> `1s500ms`."""
    millis = round(value.total_seconds() * 1000)
    if millis < 0:
        raise ValueError("durations are never negative")
    if millis == 0:
        return "0s"
    parts = []
    for unit in ("h", "m", "s", "ms"):
        amount, millis = divmod(millis, _UNIT_MS[unit])
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)
