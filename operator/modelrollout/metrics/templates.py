"""Gate queries: the built-in Istio templates and the rendering of `{{ ... }}` variables into PromQL.

Pure: no I/O, no clients. Rendering is built so that no value can change the shape of a query:

- every value is escaped for a PromQL double-quoted string (Prometheus' lexer: Go escapes, no raw newline, and
  a literal U+FFFD is refused as an invalid rune), so a value can only ever be the content of its string;
- a placeholder may stand only inside a double-quoted string, where that escaping is meaningful. The one
  exception is `{{ window }}`, a duration the operator formats itself, which belongs in a range `[...]`.

The template is scanned with PromQL's own lexical rules (strings, escapes, `#` comments) to know where each
placeholder stands, so a quote inside a comment or an escaped quote cannot fool the check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import timedelta
from enum import Enum
from typing import Literal

from modelrollout import api
from modelrollout.durations import format_duration

Role = Literal["stable", "canary"]

_TARGET_FIELDS = ("host", "service", "namespace", "subset", "port", "model", "promptVersion")
KNOWN_VARIABLES: tuple[str, ...] = (
    *(f"{prefix}.{name}" for prefix in ("target", "stable", "canary") for name in _TARGET_FIELDS),
    "window",
    "rollout.name",
    "rollout.namespace",
)
# Variables that may stand outside a string: values the operator produces and validates itself.
_BARE_VARIABLES = frozenset({"window"})

_SELECTOR = (
    'reporter="destination", destination_service_name="{{ target.service }}", '
    'destination_service_namespace="{{ target.namespace }}"'
)

BUILTIN_TEMPLATES: dict[api.GateTemplate, str] = {
    # A healthy service may never have exported a 5xx series (Istio creates a series on its first request
    # with that response code), so the numerator falls back to 0; no traffic at all still gives no data
    # (empty denominator) or NaN (0/0), which the analysis reads as Inconclusive.
    api.GateTemplate.ISTIO_ERROR_RATE: (
        f'(sum(rate(istio_requests_total{{{_SELECTOR}, response_code=~"5.."}}[{{{{ window }}}}]))'
        f" or vector(0)) / sum(rate(istio_requests_total{{{_SELECTOR}}}[{{{{ window }}}}]))"
    ),
    api.GateTemplate.ISTIO_LATENCY_P99: (
        "histogram_quantile(0.99, sum by (le) "
        f"(rate(istio_request_duration_milliseconds_bucket{{{_SELECTOR}}}[{{{{ window }}}}])))"
    ),
    api.GateTemplate.ISTIO_REQUEST_COUNT: (
        f"sum(increase(istio_requests_total{{{_SELECTOR}}}[{{{{ window }}}}]))"
    ),
}


class TemplateError(ValueError):
    """A query template that cannot be rendered safely; the message names the placeholder and why."""


@dataclass(frozen=True)
class TargetVariables:
    """What `{{ target.* }}` (and `stable.*`, `canary.*`) expand to for one model service."""

    host: str
    service: str
    namespace: str
    subset: str | None = None
    port: int | None = None
    model: str | None = None
    prompt_version: str | None = None

    @classmethod
    def of(cls, target: api.Target, rollout_namespace: str) -> TargetVariables:
        """Service and namespace as Istio's metrics label them: `llm`, `llm.ns` and `llm.ns.svc.cluster.local`
        all name Service `llm`, in `ns` or, for a short name, in the rollout's namespace."""
        labels = target.host.split(".")
        return cls(
            host=target.host,
            service=labels[0],
            namespace=labels[1] if len(labels) > 1 else rollout_namespace,
            subset=target.subset,
            port=target.port,
            model=target.model,
            prompt_version=target.prompt_version,
        )

    def values(self, prefix: str) -> dict[str, str]:
        raw: dict[str, str | int | None] = {
            "host": self.host,
            "service": self.service,
            "namespace": self.namespace,
            "subset": self.subset,
            "port": self.port,
            "model": self.model,
            "promptVersion": self.prompt_version,
        }
        return {f"{prefix}.{name}": "" if value is None else str(value) for name, value in raw.items()}


@dataclass(frozen=True)
class TemplateVariables:
    """Everything a query template may use. `target` is the service under evaluation: the canary, or the
    stable for the baseline of a comparing gate."""

    target: TargetVariables
    stable: TargetVariables
    canary: TargetVariables
    window: timedelta
    rollout_name: str
    rollout_namespace: str

    def __post_init__(self) -> None:
        if format_duration(self.window) == "0s":
            raise TemplateError(f"window must be a positive duration, got {self.window}")

    @classmethod
    def for_rollout(
        cls,
        *,
        stable: api.Target,
        canary: api.Target,
        rollout_name: str,
        rollout_namespace: str,
        window: timedelta,
        target: Role = "canary",
    ) -> TemplateVariables:
        stable_vars = TargetVariables.of(stable, rollout_namespace)
        canary_vars = TargetVariables.of(canary, rollout_namespace)
        return cls(
            target=canary_vars if target == "canary" else stable_vars,
            stable=stable_vars,
            canary=canary_vars,
            window=window,
            rollout_name=rollout_name,
            rollout_namespace=rollout_namespace,
        )

    def targeting(self, role: Role) -> TemplateVariables:
        return replace(self, target=self.canary if role == "canary" else self.stable)

    def with_window(self, window: timedelta) -> TemplateVariables:
        return replace(self, window=window)

    def values(self) -> dict[str, str]:
        return {
            **self.target.values("target"),
            **self.stable.values("stable"),
            **self.canary.values("canary"),
            "window": format_duration(self.window),
            "rollout.name": self.rollout_name,
            "rollout.namespace": self.rollout_namespace,
        }


def render_gate_query(gate: api.Gate, variables: TemplateVariables) -> str:
    """The PromQL of a gate: its built-in template or its own query, over its own window if it sets one."""
    if gate.template is not None:
        source = BUILTIN_TEMPLATES[gate.template]
    elif gate.query is not None:
        source = gate.query
    else:  # the API refuses such a gate; a hand-built one still gets a clear error
        raise TemplateError(f"gate {gate.name} has neither a template nor a query")
    if gate.window is not None:
        variables = variables.with_window(gate.window)
    return render(source, variables)


def request_count_query(variables: TemplateVariables) -> str:
    """Requests served by the target over the window, for `analysis.minRequests`."""
    return render(BUILTIN_TEMPLATES[api.GateTemplate.ISTIO_REQUEST_COUNT], variables)


def validate_template(template: str) -> None:
    """Raise TemplateError if `template` could not be rendered, whatever the values (for spec checks)."""
    _render(template, dict.fromkeys(KNOWN_VARIABLES, ""))


def render(template: str, variables: TemplateVariables) -> str:
    return _render(template, variables.values())


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

_PLACEHOLDER = re.compile(r"\{\{[ \t]*([A-Za-z0-9_.]+)[ \t]*\}\}")


class _Context(Enum):
    CODE = "outside any string"
    COMMENT = "inside a # comment"
    DOUBLE = "inside a double-quoted string"
    SINGLE = "inside a single-quoted string"
    RAW = "inside a backtick string"


_OPENERS = {'"': _Context.DOUBLE, "'": _Context.SINGLE, "`": _Context.RAW}
_CLOSERS = {_Context.DOUBLE: '"', _Context.SINGLE: "'", _Context.RAW: "`"}


def _render(template: str, values: dict[str, str]) -> str:
    out: list[str] = []
    context = _Context.CODE
    i = 0
    while i < len(template):
        if template.startswith("{{", i):
            match = _PLACEHOLDER.match(template, i)
            if match is None:
                snippet = template[i : i + 40]
                raise TemplateError(
                    f"malformed placeholder at offset {i}: {snippet!r}; expected {{{{ name }}}}"
                )
            name = match.group(1)
            if name not in values:
                raise TemplateError(
                    f"unknown variable {{{{ {name} }}}}; known variables: {', '.join(KNOWN_VARIABLES)}"
                )
            if context is _Context.DOUBLE:
                out.append(escape_promql_string(values[name]))
            elif context is _Context.CODE and name in _BARE_VARIABLES:
                out.append(values[name])
            else:
                raise TemplateError(_misplaced(name, i, context))
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
                    raise TemplateError(f"placeholder at offset {i + 1} follows a backslash")
                out.append(template[i : i + 2])
                i += 2
                continue
            if char == _CLOSERS[context]:
                context = _Context.CODE
        out.append(char)
        i += 1
    if context in (_Context.DOUBLE, _Context.SINGLE, _Context.RAW):
        raise TemplateError(f"unterminated string in query: {template!r}")
    return "".join(out)


def _misplaced(name: str, offset: int, context: _Context) -> str:
    where = f"placeholder {{{{ {name} }}}} at offset {offset} is {context.value}"
    if context is _Context.CODE:
        return f'{where}; a value must stand inside a double-quoted string, e.g. label="{{{{ {name} }}}}"'
    return (
        f"{where}; variables are filled in only inside double-quoted strings "
        "(and {{ window }} also bare, as in [{{ window }}])"
    )
