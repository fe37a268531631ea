"""What is removed from prompts and answers before any of it is kept (the few sample pairs of a report):
e-mail addresses, phone numbers, payment card numbers, bearer tokens and API-key shaped strings, plus the
patterns a user configures. Redaction runs before truncation, so a secret cut in half is not left behind.

Card numbers are redacted when the digits pass the Luhn check (13 to 19 digits, spaces or dashes allowed):
that keeps order numbers and timestamps readable. Phone numbers need a leading + or a grouping the way people
write them; a bare run of digits is left alone unless it is a card number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SAMPLE_CHARS = 2_000


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]


_RULES = (
    _Rule("bearer-token", re.compile(r"(?i)\bbearer\s+[a-z0-9._~+/=-]{8,}")),
    _Rule(
        "api-key",
        re.compile(
            r"\b(?:sk|pk|rk)-(?:[a-z0-9]+-)*[A-Za-z0-9_-]{16,}\b"  # OpenAI / Anthropic style
            r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
            r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b"  # GitHub tokens
            r"|\bxox[abposr]-[A-Za-z0-9-]{10,}\b"  # Slack tokens
            r"|\bAIza[0-9A-Za-z_-]{35}\b"  # Google API keys
            r"|(?i:\b(?:api[_-]?key|secret|token|password)\s*[:=]\s*)['\"]?[^\s'\"]{8,}"
        ),
    ),
    _Rule("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")),
)
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}\b")


def redact(text: str, extra: Iterable[re.Pattern[str]] = ()) -> str:
    """`text` with every sensitive match replaced by `[redacted:<kind>]`."""
    for rule in _RULES:
        text = rule.pattern.sub(f"[redacted:{rule.kind}]", text)

    def card(match: re.Match[str]) -> str:
        digits = re.sub(r"[ -]", "", match.group(0))
        return "[redacted:card]" if _luhn(digits) else match.group(0)

    text = _CARD.sub(card, text)
    text = _PHONE.sub("[redacted:phone]", text)
    for pattern in extra:
        text = pattern.sub("[redacted:custom]", text)
    return text


def sample(text: str, extra: Iterable[re.Pattern[str]] = (), limit: int = MAX_SAMPLE_CHARS) -> str:
    """What may be kept of `text`: redacted first, then cut to `limit` characters."""
    cleaned = redact(text, extra)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
