"""Objects decoded from the API server, made to share their strings, in place.

The operator keeps one decoded VirtualService per rollout in the watch's cache for as long as the rollout
exists, and JSON decoding gives every object its own copy of every key and value. Measured on a rollout's
body as the benchmark leaves it (4.5 KB of JSON): 19 KB as Python objects, 10 KB once keys and short values
are shared with every other object's and repeated long values within the object. (Rollout bodies are now
kept compressed by their drivers instead, see `drivers`.)

Keys and values up to `SHARED_UP_TO` characters go through `sys.intern` (one copy in the process); longer
values are shared within the object only (a message repeated in four conditions). Containers keep their
identity, so whatever already holds them sees the shared strings. Pure.
"""

from __future__ import annotations

import sys
from typing import Any

SHARED_UP_TO = 40  # condition types, reasons, verdicts, hosts and timestamps; not messages


def share_strings(obj: Any) -> None:
    """Replace the keys and string values inside `obj` (a decoded JSON object: dicts, lists, scalars) by
    shared copies. Order and identity of every dict and list are kept."""
    repeated: dict[str, str] = {}

    def shared(value: str) -> str:
        if len(value) <= SHARED_UP_TO:
            return sys.intern(value)
        return repeated.setdefault(value, value)

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            entries = list(node.items())
            node.clear()
            for key, value in entries:
                kept = shared(value) if isinstance(value, str) else visit(value)
                node[shared(key) if isinstance(key, str) else key] = kept
        elif isinstance(node, list):
            for index, value in enumerate(node):
                node[index] = shared(value) if isinstance(value, str) else visit(value)
        return node

    visit(obj)
