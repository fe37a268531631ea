"""Sticky per-user A/B assignment: a user's bucket, and the variant it gets at a canary weight.

Every user of an experiment lands in one of `BUCKETS` (100) buckets, and buckets `0 .. weight-1` go to the
canary. The assignment is therefore *monotone*: raising the canary weight from w to w' > w only adds buckets
`w .. w'-1` to the canary, so a user moves stable -> canary at most once while a rollout advances and never
back (only an abort or a rollback, which sends everyone to stable, does that). A user also keeps the same
variant on every request at a given weight, whichever replica or proxy computes it.

The bucket is a pure function of the experiment id and the user id, specified exactly so that other
implementations agree with it byte for byte:

    bucket = int.from_bytes(md5(utf8(experiment_id + ":" + user_id)), "big") % 100

- the input is the experiment id, one ":" (U+003A), and the user id, concatenated and encoded as UTF-8
  (no normalisation, no trimming, no case folding; the user id may itself contain ":");
- the digest is the whole 16-byte MD5 digest (RFC 1321) read as one unsigned 128-bit big-endian integer,
  i.e. the 32-character hex digest read as a hexadecimal number: the first digest byte is the most
  significant;
- the bucket is that integer modulo 100, a number in 0..99.

Apps that route inside the application call `bucket()`/`variant()`; the Envoy Lua filter built by
`modelrollout.routing.bucket_lua` computes the same number in the mesh. Both must agree, so this definition
never changes for an existing experiment (a new experiment id reshuffles users, which is what a new experiment
wants).

Why MD5: it is stable, specified, and available in every language and in a few hundred lines of pure Lua; its
output is uniform enough for 100 buckets. It is *not* used for security: a user who can choose their own user
id can choose their bucket, and the experiment id is not a secret. The mesh protects the header the bucket
travels in (the Lua filter overwrites whatever a client sent), not the hash.

Pure: standard library only, no I/O (the import-linter contract "the core is pure" covers this module).
"""

from __future__ import annotations

import hashlib
from typing import Literal

BUCKETS = 100
"""The number of buckets; a canary weight is a number of buckets (percent of users)."""

Variant = Literal["stable", "canary"]


def bucket(experiment_id: str, user_id: str) -> int:
    """The user's bucket in 0..99.

    `int(md5((experiment_id + ":" + user_id).encode("utf-8")).hexdigest(), 16) % 100`.
    See the module docstring for the exact definition other implementations must follow. Raises
    UnicodeEncodeError for strings that are not encodable as UTF-8 (lone surrogates).
    """
    digest = hashlib.md5((experiment_id + ":" + user_id).encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def variant(experiment_id: str, user_id: str, canary_weight: int) -> Variant:
    """The variant the user gets at a canary weight (0..100): canary iff its bucket is below the weight.

    Weight 0 sends every user to stable, 100 every user to the canary; raising the weight never moves a user
    from canary back to stable.
    """
    if isinstance(canary_weight, bool) or not 0 <= canary_weight <= BUCKETS:
        raise ValueError(f"canary weight must be an integer in 0..{BUCKETS}, got {canary_weight!r}")
    return "canary" if bucket(experiment_id, user_id) < canary_weight else "stable"
