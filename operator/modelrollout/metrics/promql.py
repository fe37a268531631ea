"""The `{{ ... }}` variables of gate queries and the scanner that places them in PromQL. Pure, and free of the
API models, so the models can check a query when a spec is parsed (before any traffic moves).

Rendering is built so that no value can change the shape of a query:

- every value is escaped for a PromQL double-quoted string (Prometheus' lexer: Go escapes, no raw newline, and
  a literal U+FFFD is refused as an invalid rune), so a value can only ever be the content of its string;
- a placeholder may stand only inside a double-quoted string, where that escaping is meaningful. The one
  exception is `{{ window }}`, a duration the operator formats itself, which belongs in a range `[...]`.

The template is scanned with PromQL's own lexical rules (strings, escapes, `#` comments) to know where each
placeholder stands, so a quote inside a comment or an escaped quote cannot fool the check. `check_template`
refuses exactly what rendering would refuse whatever the values are.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

TARGET_FIELDS = ("host", "service", "namespace", "subset", "port", "model", "promptVersion")
KNOWN_VARIABLES: tuple[str, ...] = (
    *(f"{prefix}.{name}" for prefix in ("target", "stable", "canary") for name in TARGET_FIELDS),
    "window",
    "rollout.name",
    "rollout.namespace",
)
# Variables that may stand outside a string: values the operator produces and validates itself.
BARE_VARIABLES = frozenset({"window"})

# What may stand between the braces: the scanner's and the API server's (CEL) idea of a placeholder.
NAME_CHARS = string.ascii_letters + string.digits + "_."
PLACEHOLDER = r"\{\{[ \t]*([A-Za-z0-9_.]+)[ \t]*\}\}"
_PLACEHOLDER = re.compile(PLACEHOLDER)


class TemplateError(ValueError):
    """A query template that cannot be rendered safely; the message names the placeholder and why."""


def unknown_variable_message(name: str) -> str:
    return f"unknown variable {{{{ {name} }}}} (known: {', '.join(KNOWN_VARIABLES)})"


def escape_promql_string(value: str) -> str:
    """`value` as the content of a PromQL double-quoted string (without the quotes): the string literal then
    reads back as exactly `value`."""
    out: list[str] = []
    for char in value:
        code = ord(char)
        if char in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[char])
        elif 0xD800 <= code <= 0xDFFF:
            # A lone surrogate is no character at all; Prometheus refuses it even as an escape.
            raise TemplateError(f"value {value!r} is not valid Unicode (lone surrogate U+{code:04X})")
        elif char == "\ufffd" or not char.isprintable():
            # Prometheus' lexer takes a literal U+FFFD for a decoding error, and invisible characters would
            # make a query shown in a status message mislead; both go in as \u escapes.
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


_NAMED_ESCAPES = {
    "\\": "\\\\",
    '"': '\\"',
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
}


class _Context(Enum):
    CODE = "outside any string"
    COMMENT = "inside a # comment"
    DOUBLE = "inside a double-quoted string"
    SINGLE = "inside a single-quoted string"
    RAW = "inside a backtick string"


_OPENERS = {'"': _Context.DOUBLE, "'": _Context.SINGLE, "`": _Context.RAW}
_CLOSERS = {_Context.DOUBLE: '"', _Context.SINGLE: "'", _Context.RAW: "`"}


@dataclass(frozen=True)
class _Placeholder:
    name: str
    offset: int
    context: _Context


@dataclass(frozen=True)
class _Scanned:
    """A template cut into literal text and placeholders, in order, and the error that stopped the scan (if
    any): what rendering needs, whatever the values."""

    parts: tuple[str | _Placeholder, ...]
    stopped_by: str | None  # a message, raised afresh each time (a cached exception would grow its traceback)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """The variables the template uses, each once, in order."""
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, _Placeholder)))


def render_values(template: str, values: Mapping[str, str]) -> str:
    """`template` with every placeholder replaced by its (escaped) value; TemplateError if it cannot be."""
    scanned = _scan(template)
    out: list[str] = []
    for part in scanned.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        if part.name not in values:
            raise TemplateError(unknown_variable_message(part.name))
        if part.context is _Context.DOUBLE:
            out.append(escape_promql_string(values[part.name]))
        elif part.context is _Context.CODE and part.name in BARE_VARIABLES:
            out.append(values[part.name])
        else:
            raise TemplateError(_misplaced(part.name, part.offset, part.context))
    if scanned.stopped_by is not None:
        raise TemplateError(scanned.stopped_by)
    return "".join(out)


def render_shared(template: str, values: Mapping[str, str]) -> str:
    """`render_values` for a template many rollouts render with the same values (a grouped query uses the
    window, no target): kept per template and the values it uses, so it is rendered once, not per check."""
    scanned = _scan(template)
    return _rendered(template, tuple((name, values[name]) for name in scanned.names if name in values))


@functools.lru_cache(maxsize=1024)
def _rendered(template: str, used: tuple[tuple[str, str], ...]) -> str:
    # A variable the values lack is left out of `used`: rendering raises for it as render_values does, and
    # lru_cache keeps no failure.
    return render_values(template, dict(used))


# Every rollout's check renders its gates' templates, most of them the same few built-in texts: scanned once
# (character by character, the costly part: 10% of the operator's CPU at 1,000 rollouts when done per check).
@functools.lru_cache(maxsize=1024)
def _scan(template: str) -> _Scanned:
    """Scan `template` by PromQL's lexical rules. Errors that depend on the values (an unknown variable, one
    misplaced) are left to rendering, at their place among the parts, so the first error in the text is the
    one reported, as a scan with the values would."""
    parts: list[str | _Placeholder] = []
    literal: list[str] = []
    context = _Context.CODE

    def stop(error: str) -> _Scanned:
        parts.append("".join(literal))
        return _Scanned(tuple(parts), error)

    i = 0
    while i < len(template):
        if template.startswith("{{", i):
            match = _PLACEHOLDER.match(template, i)
            if match is None:
                snippet = template[i : i + 40]
                return stop(f"malformed placeholder at offset {i}: {snippet!r}; expected {{{{ name }}}}")
            parts.append("".join(literal))
            literal = []
            parts.append(_Placeholder(match.group(1), i, context))
            i = match.end()
            continue
        char = template[i]
        if context is _Context.CODE:
            if char == "#":
                context = _Context.COMMENT
            elif char in _OPENERS:
                context = _OPENERS[char]
        elif context is _Context.COMMENT:
            if char in "\r\n":
                context = _Context.CODE
        elif context is _Context.RAW:
            if char == "`":
                context = _Context.CODE
        else:  # a single- or double-quoted string: a backslash escapes the next character
            if char == "\\":
                if template.startswith("{{", i + 1):
                    # A value glued to a backslash would lose its first escape: `\` + `\"` closes the string.
                    return stop(f"placeholder at offset {i + 1} follows a backslash")
                literal.append(template[i : i + 2])
                i += 2
                continue
            if char == _CLOSERS[context]:
                context = _Context.CODE
        literal.append(char)
        i += 1
    if context in (_Context.DOUBLE, _Context.SINGLE, _Context.RAW):
        return stop(f"unterminated string in query: {template!r}")
    parts.append("".join(literal))
    return _Scanned(tuple(part for part in parts if part != ""), None)


def check_template(template: str) -> None:
    """Raise TemplateError if `template` could not be rendered, whatever the values (for spec checks). Every
    value is checked as the empty string: escaping refuses nothing a spec field can hold."""
    problem = _template_problem(template)
    if problem is not None:
        raise TemplateError(problem)


# Every tick checks its spec's templates again (the spec is not kept between ticks: ~7 KB a rollout as a
# model); the answer depends on the text alone, so it is kept per text, as a message raised afresh each time.
@functools.lru_cache(maxsize=1024)
def _template_problem(template: str) -> str | None:
    try:
        render_values(template, dict.fromkeys(KNOWN_VARIABLES, ""))
    except TemplateError as error:
        return str(error)
    return None


def _misplaced(name: str, offset: int, context: _Context) -> str:
    where = f"placeholder {{{{ {name} }}}} at offset {offset} is {context.value}"
    if context is _Context.CODE:
        return f'{where}; a value must stand inside a double-quoted string, e.g. label="{{{{ {name} }}}}"'
    return (
        f"{where}; variables are filled in only inside double-quoted strings "
        "(and {{ window }} also bare, as in [{{ window }}])"
    )
