"""Header regexes that select sticky buckets: `0 .. weight-1` for the canary, `weight .. 99` for stable.

A VirtualService route that matches the bucket header (`x-user-bucket: 0..99`, see `modelrollout.assign`)
with `bucket_regex(weight)` sends those users to the canary, one with `stable_bucket_regex(weight)` sends the
rest to stable; both sit ahead of the weighted route, which keeps serving requests without a bucket. Because
the canary set at weight w is a subset of the set at w+1, advancing a stage only moves users stable -> canary.

Istio's header `regex` match is RE2 with full-string semantics (Envoy's `safe_regex` must match the whole
value), so a pattern here matches exactly the decimal strings of its integers: no leading zeros, no sign, no
whitespace. The patterns use only digits, `[a-b]` digit ranges, `?` and `|`, which mean the same in RE2 and in
Python's `re` (the tests check them with `re.fullmatch`); `\\d` is avoided because Python's matches non-ASCII
digits. Weight 0 has no canary pattern (None: nobody is in the canary, so there is no route to write); weight
100 has no stable pattern.

Pure: no I/O (the import-linter contract "the core is pure" covers this module).
"""

from __future__ import annotations

from modelrollout.assign import BUCKETS


def _digits(lo: int, hi: int) -> str:
    """A pattern for one digit in lo..hi (0 <= lo <= hi <= 9)."""
    if lo == hi:
        return str(lo)
    if hi == lo + 1:
        return f"[{lo}{hi}]"
    return f"[{lo}-{hi}]"


def _range_regex(lo: int, hi: int) -> str:
    """A compact pattern for the decimal strings of lo..hi, 0 <= lo <= hi <= 99, as alternatives."""
    parts: list[str] = []
    one_digit_full = lo == 0 and hi >= 9
    if lo <= 9:
        parts.append(_digits(lo, min(hi, 9)))
    start = max(lo, 10)
    if start <= hi:
        first_tens, last_tens = start // 10, hi // 10
        if first_tens == last_tens and not (start % 10 == 0 and hi % 10 == 9):
            parts.append(f"{first_tens}{_digits(start % 10, hi % 10)}")
        else:
            # The leading partial decade, the full decades, the trailing partial decade.
            full_from = first_tens if start % 10 == 0 else first_tens + 1
            full_to = last_tens if hi % 10 == 9 else last_tens - 1
            if start % 10 != 0:
                parts.append(f"{first_tens}{_digits(start % 10, 9)}")
            if full_from <= full_to:
                if one_digit_full and full_from == 1:
                    # "[0-9]" and "[1-k][0-9]" fold into "[1-k]?[0-9]".
                    parts.remove("[0-9]")
                    parts.insert(0, f"{_digits(1, full_to)}?[0-9]")
                else:
                    parts.append(f"{_digits(full_from, full_to)}[0-9]")
            if hi % 10 != 9:
                parts.append(f"{last_tens}{_digits(0, hi % 10)}")
    return "|".join(parts)


def _check_weight(weight: int) -> None:
    if isinstance(weight, bool) or not 0 <= weight <= BUCKETS:
        raise ValueError(f"weight must be an integer in 0..{BUCKETS}, got {weight!r}")


def bucket_regex(weight: int) -> str | None:
    """The RE2 pattern matching exactly the buckets `0 .. weight-1` (the canary's), or None for weight 0.

    For example `[0-4]` for 5, `1?[0-9]|2[0-4]` for 25, `[1-9]?[0-9]` for 100.
    """
    _check_weight(weight)
    if weight == 0:
        return None
    return _range_regex(0, weight - 1)


def stable_bucket_regex(weight: int) -> str | None:
    """The RE2 pattern matching exactly the buckets `weight .. 99` (stable's), or None for weight 100."""
    _check_weight(weight)
    if weight == BUCKETS:
        return None
    return _range_regex(weight, BUCKETS - 1)
