"""Which rollouts this operator drives: sharding by one label, for fleets beyond one replica.

An operator started with `--shard NAME` drives the rollouts labelled `modelrollout.io/shard: NAME` and no
other; one started without it drives the rollouts without that label (or with it empty). Each rollout's
label names at most one shard, so two operators never drive the same rollout, whatever shards exist: the
selector is a single label value rather than any label selector, because two selectors that overlap would
put two writers on one VirtualService (each write is conditional, so both would keep meeting 409s and
deciding again). A rollout whose shard no operator runs is not driven at all: its VirtualService stays
as it is.

Each shard has a finalizer of its own (`of_shard`): kopf removes the operator's finalizer from any
object its deletion handler does not match, so with one name shared, each operator would take the others'
finalizer off and the others put it back, forever (seen against the API server: every status write then
met a 409). Relabelling a rollout moves it: the operator it leaves stops its driver at the event (a tick
under way writes nothing more), kopf there removes that shard's finalizer, and the operator it joins adds
its own and drives the rollout from its status, as after a restart. The shard is checked at each event,
not by a label selector on the watch: a watch with a selector shows a rollout that leaves it as deleted, and
kopf would never take that shard's finalizer off it. Pure: no kopf, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SHARD_LABEL = "modelrollout.io/shard"

# A DNS label: a valid label value, and valid inside the Lease name a shard gets by default.
_SHARD_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
MAX_SHARD_NAME = 40  # "modelrollout-operator-" + the name stays a valid Lease name with room to spare


def shard_name_problem(name: str) -> str | None:
    """Why `name` cannot name a shard, or None."""
    if not _SHARD_NAME.fullmatch(name):
        return (
            f"shard name {name!r}: lowercase letters, digits and '-', starting and ending with a letter or "
            "a digit"
        )
    if len(name) > MAX_SHARD_NAME:
        return f"shard name {name!r}: at most {MAX_SHARD_NAME} characters"
    return None


def shard_of(labels: Mapping[str, str] | None) -> str | None:
    """The shard a rollout's labels name; None for the default shard (no label, or an empty one)."""
    value = (labels or {}).get(SHARD_LABEL)
    return value or None


def in_shard(labels: Mapping[str, str] | None, shard: str | None) -> bool:
    """Whether the operator of `shard` (None: started without `--shard`) drives a rollout with `labels`."""
    return shard_of(labels) == shard


def of_shard(base: str, shard: str | None) -> str:
    """A name of the shard's own, from `base`: `base` without a shard (what operators before sharding used),
    `base-NAME` with one. The finalizer the shard's operator puts on its rollouts (a qualified name: at
    most 63 characters after the '/'), and by default the Lease its replicas elect their leader with, so
    the replicas of two shards never stand by for each other."""
    return f"{base}-{shard}" if shard else base
