"""Gate query templates: the exact PromQL of the built-ins, the variables, and rendering that no value can
break out of. Also the pure pieces of the Prometheus provider: result parsing and Secret credentials."""

from __future__ import annotations

import base64
import gc
import math
import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelrollout import api
from modelrollout.metrics.credentials import PrometheusAuth, auth_from_secret_data
from modelrollout.metrics.families import EVENT_TEMPLATES
from modelrollout.metrics.prometheus import rows_from_result, samples_from_result
from modelrollout.metrics.promql import NAME_CHARS, render_shared, render_values
from modelrollout.metrics.provider import MetricsError, Sample
from modelrollout.metrics.templates import (
    KNOWN_VARIABLES,
    TargetVariables,
    TemplateError,
    TemplateVariables,
    builtin_template,
    check_template,
    escape_promql_string,
    render,
    render_gate_query,
    request_count_query,
    spec_template_errors,
)
from spec_cases import sample_spec

# ---- a PromQL string-literal reader written from Prometheus' lexer rules, independent of the code under test


class LexError(ValueError):
    pass


_SIMPLE = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\"}


def read_string(text: str, start: int) -> tuple[str, int]:
    """The value of the quoted string opening at `start`, and the offset after its closing quote."""
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while True:
        if i >= len(text):
            raise LexError("unterminated quoted string")
        char = text[i]
        if char == "\n":
            raise LexError("unterminated quoted string (raw newline)")
        if char == "\ufffd":
            raise LexError("invalid UTF-8 rune")  # what Prometheus' lexer makes of a literal U+FFFD
        if char == quote:
            return "".join(out), i + 1
        if char != "\\":
            out.append(char)
            i += 1
            continue
        kind = text[i + 1 : i + 2]
        if kind in _SIMPLE or kind == quote:
            out.append(_SIMPLE.get(kind, quote))
            i += 2
        elif kind in ("x", "u", "U") or kind.isdigit():
            digits, base, skip = {"x": (2, 16, 2), "u": (4, 16, 2), "U": (8, 16, 2)}.get(kind, (3, 8, 1))
            chunk = text[i + skip : i + skip + digits]
            if len(chunk) != digits:
                raise LexError("escape sequence not terminated")
            code = int(chunk, base)
            if code > 0x10FFFF or 0xD800 <= code < 0xE000:
                raise LexError("escape sequence is an invalid Unicode code point")
            out.append(chr(code))
            i += skip + digits
        else:
            raise LexError(f"unknown escape sequence {kind!r}")


def split_promql(query: str) -> tuple[list[str], list[str]]:
    """The query as (code between strings, string values), comments included in the code parts."""
    code, strings, piece = [], [], []
    i = 0
    comment = False
    while i < len(query):
        char = query[i]
        if comment:
            comment = char != "\n"
        elif char == "#":
            comment = True
        elif char in "\"'":
            value, i = read_string(query, i)
            code.append("".join(piece))
            strings.append(value)
            piece = []
            continue
        piece.append(char)
        i += 1
    code.append("".join(piece))
    return code, strings


def test_reader_knows_prometheus_escapes() -> None:
    assert split_promql(r'a{b="x\"y\\z\n\u00e9\x41\101\U0001F600"}') == (["a{b=", "}"], ['x"y\\z\néAA😀'])
    for broken in ['a{b="x\ny"}', 'a{b="\ufffd"}', r'a{b="\q"}', r'a{b="\ud800"}', 'a{b="x']:
        with pytest.raises(LexError):
            split_promql(broken)


# ---- fixtures

STABLE = api.Target(host="llm-gpt4o", model="gpt-4o", prompt_version="v12")
CANARY = api.Target(
    host="llm-claude.models.svc.cluster.local",
    subset="v2",
    port=8080,
    model="claude-opus-4-8",
    prompt_version="v13",
)


def variables(window: timedelta = timedelta(minutes=2), **target: str | int | None) -> TemplateVariables:
    built = TemplateVariables.for_rollout(
        stable=STABLE, canary=CANARY, rollout_name="chat", rollout_namespace="llm", window=window
    )
    if target:
        values = {"host": "llm-claude", "service": "llm-claude", "namespace": "models", **target}
        built = TemplateVariables(
            target=TargetVariables(**values),  # type: ignore[arg-type]
            stable=built.stable,
            canary=built.canary,
            window=built.window,
            rollout_name=built.rollout_name,
            rollout_namespace=built.rollout_namespace,
        )
    return built


# The mesh's own templates with a threshold (the llm-* ones have their own tests).
ISTIO_TEMPLATES = [t for t in api.GateTemplate if t.value.startswith("istio-") and t not in EVENT_TEMPLATES]


def gate(**fields: object) -> api.Gate:
    return api.Gate.model_validate({"name": "g", "max": 1, **fields})


SELECTOR = (
    'reporter="destination", destination_service_name="llm-claude", destination_service_namespace="models", '
    'destination_version="v2"'  # the canary names DestinationRule subset v2
)


# ---- the built-in templates, exactly


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (
            "istio-error-rate",
            f'(sum(rate(istio_requests_total{{{SELECTOR}, response_code=~"5.."}}[2m])) or vector(0))'
            f" / sum(rate(istio_requests_total{{{SELECTOR}}}[2m]))",
        ),
        (
            "istio-latency-p99",
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(istio_request_duration_milliseconds_bucket{{{SELECTOR}}}[2m])))",
        ),
        ("istio-request-count", f"sum(increase(istio_requests_total{{{SELECTOR}}}[2m]))"),
    ],
)
def test_builtin_template_renders_exact_promql(template: str, expected: str) -> None:
    assert render_gate_query(gate(template=template), variables()) == expected


def test_request_count_query_is_the_request_count_template() -> None:
    assert request_count_query(variables()) == f"sum(increase(istio_requests_total{{{SELECTOR}}}[2m]))"
    assert request_count_query(variables(window=timedelta(seconds=90))).endswith("[1m30s]))")


def test_every_builtin_template_targets_the_stable_when_asked() -> None:
    stable = variables().targeting("stable")
    for template in ISTIO_TEMPLATES:
        query = render_gate_query(gate(template=template.value), stable)
        assert 'destination_service_name="llm-gpt4o", destination_service_namespace="llm"}' in query
        assert "llm-claude" not in query
        assert "destination_version" not in query  # the stable names no subset: all its series


def subset_pair(subset_label: str | None = None) -> TemplateVariables:
    """Stable and canary on one host, told apart only by their DestinationRule subsets."""
    return TemplateVariables.for_rollout(
        stable=api.Target(host="llm", subset="v1"),
        canary=api.Target(host="llm", subset="v2"),
        rollout_name="chat",
        rollout_namespace="llm",
        window=timedelta(minutes=2),
        **({"subset_label": subset_label} if subset_label else {}),
    )


@pytest.mark.parametrize("template", ISTIO_TEMPLATES)
def test_builtin_templates_tell_a_subset_canary_from_its_stable(template: api.GateTemplate) -> None:
    """Same host, other subset: the built-ins select each side by Istio's destination_version label (the
    subset is named after the pods' version label), so a subset canary gets working built-in gates."""
    canary = render_gate_query(gate(template=template.value), subset_pair())
    stable = render_gate_query(gate(template=template.value), subset_pair().targeting("stable"))
    selector = 'destination_service_name="llm", destination_service_namespace="llm"'
    assert f'{selector}, destination_version="v2"' in canary
    assert f'{selector}, destination_version="v1"' in stable
    assert canary.replace('"v2"', '"v1"') == stable
    _, strings = split_promql(canary)
    assert strings.count("v2") == canary.count("istio_")  # every selector of the query, none missed
    assert request_count_query(subset_pair()) == (
        f'sum(increase(istio_requests_total{{reporter="destination", {selector}, destination_version="v2"}}'
        "[2m]))"
    )


def test_the_subset_label_is_configurable() -> None:
    query = render_gate_query(
        gate(template="istio-error-rate"), subset_pair("destination_canonical_revision")
    )
    assert 'destination_canonical_revision="v2"' in query
    assert "destination_version" not in query


@pytest.mark.parametrize("label", ["destination-version", 'x"}', "1abc", ""])
def test_a_subset_label_that_is_not_a_label_name_is_refused(label: str) -> None:
    with pytest.raises(TemplateError, match="not a Prometheus label name"):
        builtin_template(api.GateTemplate.ISTIO_ERROR_RATE, label)
    spec = sample_spec()
    spec["analysis"]["subsetLabel"] = label
    assert any(e.startswith("spec.analysis.subsetLabel: ") for e in api.spec_errors(spec))


# ---- variables


@pytest.mark.parametrize(
    ("host", "service", "namespace"),
    [
        ("llm-claude", "llm-claude", "llm"),  # short name: the rollout's namespace
        ("llm-claude.models", "llm-claude", "models"),
        ("llm-claude.models.svc", "llm-claude", "models"),
        ("llm-claude.models.svc.cluster.local", "llm-claude", "models"),
        ("a.b.c.d.e", "a", "b"),
    ],
)
def test_service_and_namespace_come_from_the_host(host: str, service: str, namespace: str) -> None:
    target = TargetVariables.of(api.Target(host=host), hosts_namespace="llm")
    assert (target.host, target.service, target.namespace) == (host, service, namespace)


def test_short_hosts_live_in_the_virtual_services_namespace() -> None:
    """Istio resolves a VirtualService's short hosts in the VirtualService's namespace, so that is where
    the gates look for them; `rollout.namespace` stays the rollout's."""
    built = TemplateVariables.for_rollout(
        stable=api.Target(host="llm-gpt4o"),
        canary=api.Target(host="llm-claude.models"),
        rollout_name="chat",
        rollout_namespace="rollouts",
        window=timedelta(minutes=2),
        hosts_namespace="mesh",
    )
    values = built.values()
    assert (values["stable.namespace"], values["canary.namespace"]) == ("mesh", "models")
    assert values["rollout.namespace"] == "rollouts"
    query = render_gate_query(gate(template="istio-error-rate"), built.targeting("stable"))
    assert 'destination_service_namespace="mesh"' in query


def test_every_known_variable_renders() -> None:
    template = "x{" + ", ".join(f'v{i}="{{{{ {name} }}}}"' for i, name in enumerate(KNOWN_VARIABLES)) + "}"
    _, strings = split_promql(render(template, variables()))
    assert dict(zip(KNOWN_VARIABLES, strings, strict=True)) == {
        "target.host": "llm-claude.models.svc.cluster.local",
        "target.service": "llm-claude",
        "target.namespace": "models",
        "target.subset": "v2",
        "target.port": "8080",
        "target.model": "claude-opus-4-8",
        "target.promptVersion": "v13",
        "stable.host": "llm-gpt4o",
        "stable.service": "llm-gpt4o",
        "stable.namespace": "llm",
        "stable.subset": "",  # a missing optional value is the empty string
        "stable.port": "",
        "stable.model": "gpt-4o",
        "stable.promptVersion": "v12",
        "canary.host": "llm-claude.models.svc.cluster.local",
        "canary.service": "llm-claude",
        "canary.namespace": "models",
        "canary.subset": "v2",
        "canary.port": "8080",
        "canary.model": "claude-opus-4-8",
        "canary.promptVersion": "v13",
        "window": "2m",
        "rollout.name": "chat",
        "rollout.namespace": "llm",
    }


@pytest.mark.parametrize("spelling", ["{{target.host}}", "{{ target.host }}", "{{   target.host\t}}"])
def test_whitespace_inside_the_braces_is_optional(spelling: str) -> None:
    assert render(f'x{{h="{spelling}"}}', variables()) == 'x{h="llm-claude.models.svc.cluster.local"}'


def test_custom_query_renders_with_escaping_and_the_default_window() -> None:
    query = (
        'sum(rate(llm_refusals_total{service="{{ target.host }}", model="{{ target.model }}"}[{{ window }}]))'
        ' / sum(rate(llm_requests_total{service="{{ target.host }}"}[{{window}}]))'
    )
    rendered = render_gate_query(gate(query=query), variables(model='gpt "4o"'))
    assert rendered == (
        'sum(rate(llm_refusals_total{service="llm-claude", model="gpt \\"4o\\""}[2m]))'
        ' / sum(rate(llm_requests_total{service="llm-claude"}[2m]))'
    )


@pytest.mark.parametrize(
    ("window", "rendered"),
    [(None, "[2m]"), ("30s", "[30s]"), ("1h30m", "[1h30m]"), ("90s", "[1m30s]")],
)
def test_a_gate_window_overrides_the_default(window: str | None, rendered: str) -> None:
    for source in ({"template": "istio-error-rate"}, {"query": 'up{job="{{ rollout.name }}"}[{{ window }}]'}):
        query = render_gate_query(gate(window=window, **source), variables())
        assert rendered in query
        assert ("[2m]" in query) == (window is None)


def test_a_zero_window_is_refused() -> None:
    with pytest.raises(TemplateError, match="window"):
        variables(window=timedelta(0))


# ---- hostile values

HOSTILE = [
    '"',
    "\\",
    '\\"',
    "abc\\",
    '"} or vector(1) #',
    '\\"} or vector(1) #',
    '"}[5m])) or on() vector(1) #',
    'x", job=~".+',
    "x'} or vector(1) #",
    "a\nb",
    "a\r\nb",
    "tab\there",
    "\x00\x01\x1b\x7f",
    "`raw`",
    "# comment",
    "{{ target.host }}",  # a value is never expanded again
    "}}{{",
    "é中文😀",
    "\ufffd",
    "zero\u200bwidth\u2028line",
    "\u0085next-line",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_stays_inside_its_string(value: str) -> None:
    template = 'sum(rate(x{a="{{ target.model }}", b=~"{{ target.host }}.*"}[{{ window }}]))'
    code, strings = split_promql(render(template, variables(model=value, host=value)))
    assert strings == [value, f"{value}.*"]
    assert code == ["sum(rate(x{a=", ", b=~", "}[2m]))"]


@given(st.text())
def test_escaping_round_trips_any_text(value: str) -> None:
    assert split_promql(f'"{escape_promql_string(value)}"') == (["", ""], [value])


def test_escaped_values_have_no_raw_newline_or_replacement_char() -> None:
    escaped = escape_promql_string("a\nb\ufffdc\u200b")
    assert escaped == "a\\nb\\ufffdc\\u200b"


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(TemplateError, match="lone surrogate"):
        render('x{m="{{ target.model }}"}', variables(model="a\ud800b"))


@pytest.mark.parametrize("value", HOSTILE[:4])
def test_a_shared_render_is_the_render_of_the_values_it_uses(value: str) -> None:
    """Grouped queries are rendered once per template and the values they use: the same text as a render
    of their own, a change of a used value a new text, one of an unused value the same; an error each time."""
    template = 'sum(rate(x{a="{{ target.model }}"}[{{ window }}]))'
    values = dict(variables(model=value).values())
    assert render_shared(template, values) == render_values(template, values)
    assert render_shared(template, {**values, "window": "7m"}) == render_values(
        template, {**values, "window": "7m"}
    )
    assert "[7m]" in render_shared(template, {**values, "window": "7m"})
    assert render_shared(template, {**values, "target.host": "elsewhere"}) == render_values(template, values)
    for _ in range(2):
        with pytest.raises(TemplateError, match=r"target\.model"):
            render_shared(template, {k: v for k, v in values.items() if k != "target.model"})
    with pytest.raises(TemplateError, match="single-quoted"):
        render_shared("x{m='{{ window }}'}", values)


# ---- placeholders where escaping cannot protect them


@pytest.mark.parametrize(
    ("template", "where"),
    [
        ("x{m={{ target.model }}}", "outside any string"),
        ("x{m='{{ target.model }}'}", "single-quoted"),
        ("x{m=`{{ target.model }}`}", "backtick"),
        ('x # model="{{ target.model }}"\n', "comment"),
        ("x # [{{ window }}]\n", "comment"),
        ("sum(x) by ({{ target.service }})", "outside any string"),
        ("x offset {{ rollout.name }}", "outside any string"),
    ],
)
def test_a_placeholder_outside_a_double_quoted_string_is_refused(template: str, where: str) -> None:
    name = template.split("{{ ", maxsplit=1)[1].split(" }}", maxsplit=1)[0]
    with pytest.raises(TemplateError, match=where) as refused:
        render(template, variables())
    assert f"{{{{ {name} }}}}" in str(refused.value)
    with pytest.raises(TemplateError):
        check_template(template)


def test_quotes_in_comments_and_escaped_quotes_do_not_fool_the_scanner() -> None:
    # The quote in the comment opens nothing; the placeholder after it is really outside a string.
    with pytest.raises(TemplateError, match="outside any string"):
        render('x # "\n{m={{ target.model }}}', variables())
    # An escaped quote does not close the string: the placeholder is still inside it.
    assert render('x{m="\\"{{ target.model }}"}', variables(model="m")) == 'x{m="\\"m"}'
    with pytest.raises(TemplateError, match="follows a backslash"):
        render('x{m="\\{{ target.model }}"}', variables())


def test_window_may_stand_bare_or_quoted() -> None:
    assert render('x[{{ window }}] or label_replace(y, "w", "{{ window }}", "", "")', variables()) == (
        'x[2m] or label_replace(y, "w", "2m", "", "")'
    )


def test_an_unknown_variable_is_named_with_the_known_ones() -> None:
    with pytest.raises(TemplateError) as refused:
        render('x{m="{{ target.modelName }}"}', variables())
    message = str(refused.value)
    assert "{{ target.modelName }}" in message
    for known in ("target.model", "canary.promptVersion", "window", "rollout.namespace"):
        assert known in message


@pytest.mark.parametrize(
    "template", ['x{m="{{ target.model | upper }}"}', 'x{m="{{ }}"}', 'x{m="{{ target.model"}', 'x{m="a}']
)
def test_malformed_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        check_template(template)


@pytest.mark.parametrize(
    ("template", "says"),
    [
        # The first problem in the text is the one reported, whichever kind it is.
        ('x{m="{{ nope }}"} {{ target.model', "unknown variable {{ nope }}"),
        ('x{m="{{ target.model"} y{m="{{ nope }}"}', "malformed placeholder at offset 5"),
        ('x{m={{ target.model }}} y{m="{{ nope }}"}', "at offset 4 is outside any string"),
        ('x{m="{{ nope }}"} y{m="\\{{ target.model }}"}', "unknown variable {{ nope }}"),
        ('x{m="\\{{ target.model }}"} y{m="{{ nope }}"}', "at offset 6 follows a backslash"),
        ('x{m="{{ nope }}"} y{m="open', "unknown variable {{ nope }}"),
        ('x{m="{{ target.model }}"} y{m="open', "unterminated string"),
    ],
)
def test_the_first_problem_in_a_template_is_the_one_reported(template: str, says: str) -> None:
    for _ in range(2):  # the second time from the scan kept for the template: the same answer
        with pytest.raises(TemplateError) as refused:
            render(template, variables())
        assert says in str(refused.value)


def test_a_template_renders_each_time_with_the_values_given() -> None:
    template = 'sum(rate(x{m="{{ target.model }}", h="{{ target.host }}"}[{{ window }}]))'
    first = render(template, variables(model="m1"))
    changed = render(template, variables(window=timedelta(minutes=5), model='m"2', host="other"))
    assert first == 'sum(rate(x{m="m1", h="llm-claude"}[2m]))'
    assert changed == 'sum(rate(x{m="m\\"2", h="other"}[5m]))'
    assert render(template, variables(model="m1")) == first


def test_unknown_variables_in_a_spec_are_named_with_the_gate_before_anything_runs() -> None:
    raw = sample_spec()
    raw["analysis"]["gates"][2]["query"] = 'sum(rate(x{m="{{ canary.modle }}"}[{{ window }}]))'
    # The models refuse it when the spec is parsed (an InvalidSpec before any traffic moves) ...
    errors = api.spec_errors(raw)
    assert errors == [
        "spec.analysis.gates[2].query: unknown variable {{ canary.modle }} (known: "
        + ", ".join(KNOWN_VARIABLES)
        + ")"
    ]
    # ... and spec_template_errors says the same of a spec built without validation.
    spec = api.parse_spec(sample_spec())
    gates = list(spec.analysis.gates)
    gates[2] = api.Gate.model_construct(**{**dict(gates[2]), "query": raw["analysis"]["gates"][2]["query"]})
    built = spec.model_copy(update={"analysis": spec.analysis.model_copy(update={"gates": gates})})
    assert spec_template_errors(built) == errors
    assert spec_template_errors(spec) == []


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("x{m={{ target.model }}}", "placeholder {{ target.model }} at offset 4 is outside any string"),
        ("x{m='{{ target.model }}'}", "inside a single-quoted string"),
        ('x{m="{{ target.model | upper }}"}', "malformed placeholder"),
        ('x{m="a}', "unterminated string"),
        ('x{m="\\{{ target.model }}"}', "follows a backslash"),
    ],
)
def test_every_template_refusal_is_a_spec_error(query: str, says: str) -> None:
    raw = sample_spec()
    raw["analysis"]["gates"][1] = {"name": "custom", "query": query, "max": 1}
    [error] = api.spec_errors(raw)
    assert error.startswith("spec.analysis.gates[1].query: ")
    assert says in error


def cel_refuses(query: str) -> bool:
    """The CRD's CEL rule on a gate query, run with Python's re (the regexes are RE2-compatible)."""
    return len(re.findall(api.ANY_PLACEHOLDER, query, re.ASCII)) != len(
        re.findall(api.KNOWN_PLACEHOLDER, query, re.ASCII)
    )


def test_the_api_servers_rule_finds_exactly_the_unknown_variables() -> None:
    """Counting placeholders and known ones (the CEL rule) refuses a query exactly when the models do for an
    unknown variable: every known name passes, every near miss is refused."""
    names = set(KNOWN_VARIABLES)
    for known in KNOWN_VARIABLES:
        for i in range(len(known) + 1):
            names.add(known[:i])  # prefixes
            names.add(known[:i] + known[i + 1 :])  # one character dropped
            for char in NAME_CHARS:
                names.add(known[:i] + char + known[i:])  # one inserted
                names.add(known[:i] + char + known[i + 1 :])  # one replaced
    names.discard("")
    for name in sorted(names):
        query = f'x{{a="{{{{ target.host }}}}", b="{{{{\t{name}  }}}}"}}[{{{{window}}}}]'
        assert cel_refuses(query) == (name not in KNOWN_VARIABLES), name
    assert not cel_refuses(sample_spec()["analysis"]["gates"][2]["query"])


@given(st.text(alphabet=NAME_CHARS, min_size=1, max_size=30))
def test_any_name_is_refused_by_the_rule_exactly_when_unknown(name: str) -> None:
    assert cel_refuses(f'x{{a="{{{{{name}}}}}"}}') == (name not in KNOWN_VARIABLES)


def test_the_sample_gate_queries_are_valid_templates() -> None:
    refusal = (
        'sum(rate(llm_refusals_total{service="{{ target.host }}"}[{{ window }}])) / '
        'sum(rate(llm_requests_total{service="{{ target.host }}"}[{{ window }}]))'
    )
    check_template(refusal)


# ---- result parsing (the pure half of the Prometheus provider)


def test_vector_results_become_samples() -> None:
    raw = [
        {"metric": {"pod": "a"}, "value": [1700000000.1, "0.25"]},
        {"metric": {"pod": "b"}, "value": [1700000000.1, "+Inf"]},
        {"metric": {}, "value": [1700000000.1, "-Inf"]},
    ]
    assert samples_from_result("q", raw) == [
        Sample(labels={"pod": "a"}, value=0.25),
        Sample(labels={"pod": "b"}, value=math.inf),
        Sample(labels={}, value=-math.inf),
    ]


def test_nan_and_scalars_and_empty_vectors() -> None:
    [nan] = samples_from_result("q", [{"metric": {}, "value": [1.0, "NaN"]}])
    assert math.isnan(nan.value)
    assert samples_from_result("q", [1700000000.5, "42"]) == [Sample(labels={}, value=42.0)]
    assert samples_from_result("q", []) == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([{"metric": {}, "values": [[1.0, "1"]]}], "range vector"),
        ([{"metric": {}, "value": [1.0, "lots"]}], "non-numeric"),
        ([{"metric": {}, "value": [1.0, "inf"]}], "non-numeric"),
        ({"resultType": "vector"}, "unexpected result"),
        ([{"metric": {}, "histogram": [1.0, {}]}], "neither a vector nor a scalar"),
        ([{"metric": ["pod"], "value": [1.0, "1"]}], "unexpected labels"),
        ([{"metric": {}, "value": "1"}], "unexpected sample"),
        (["not a series"], "unexpected result"),
    ],
)
@pytest.mark.parametrize("read", ["samples", "rows"])
def test_unexpected_results_are_metrics_errors(raw: object, reason: str, read: str) -> None:
    """Read as samples (a rollout's own query) or split into rows (a grouped one), the same answer fails
    the same way."""
    reading = {
        "samples": lambda: samples_from_result("up[1m]", raw),
        "rows": lambda: rows_from_result("up[1m]", raw, ("service",)),
    }[read]
    with pytest.raises(MetricsError, match=reason) as failed:
        reading()
    assert failed.value.query == "up[1m]"
    assert "up[1m]" in str(failed.value)


GROUP = ("destination_service_name", "destination_service_namespace")


def test_a_grouped_answer_gives_each_target_the_rows_its_own_query_would() -> None:
    """Split in one pass: each target's rows are the samples of its own series, less the group labels."""
    raw = [
        {
            "metric": {"destination_service_name": "a", "destination_service_namespace": "ns"},
            "value": [1, "1"],
        },
        {
            "metric": {"destination_service_name": "a", "destination_service_namespace": "ns", "code": "503"},
            "value": [1, "NaN"],
        },
        {
            "metric": {"destination_service_namespace": "ns", "destination_service_name": "b"},
            "value": [1, "2"],
        },
        {"metric": {"destination_service_name": "c"}, "value": [1, "+Inf"]},
        {"metric": {"code": "200"}, "value": [1, "4"]},
    ]
    rows = rows_from_result("q", raw, GROUP)
    assert set(rows) == {("a", "ns"), ("b", "ns"), ("c", ""), ("", "")}
    for key, got in rows.items():
        own = [
            Sample({k: v for k, v in s.labels.items() if k not in GROUP}, s.value)
            for s in samples_from_result("q", raw)
            if tuple(s.labels.get(label, "") for label in GROUP) == key
        ]
        assert [s.labels for s in got] == [s.labels for s in own], key
        assert [repr(s.value) for s in got] == [repr(s.value) for s in own], key  # NaN as NaN
    # A row that carried only the group labels has no labels left, and cannot be changed through them.
    [only] = rows[("b", "ns")]
    assert only.labels == {}
    with pytest.raises(TypeError):
        only.labels["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ([({}, "1"), ({}, "2")], [({}, 1.0), ({}, 2.0)]),  # two bare samples of one target
        ([({"code": "503"}, "1"), ({}, "2")], [({"code": "503"}, 1.0), ({}, 2.0)]),  # labelled, then bare
        ([({}, "1"), ({"code": "503"}, "2")], [({}, 1.0), ({"code": "503"}, 2.0)]),  # bare, then labelled
        ([({}, "NaN")], [({}, math.nan)]),
    ],
)
def test_a_targets_rows_keep_the_answers_order_however_they_are_held(
    series: list[tuple[dict[str, str], str]], expected: list[tuple[dict[str, str], float]]
) -> None:
    key = {"destination_service_name": "a", "destination_service_namespace": "ns"}
    raw = [{"metric": {**key, **labels}, "value": [1, value]} for labels, value in series]
    rows = rows_from_result("q", raw, GROUP)
    assert list(rows) == [("a", "ns")]
    assert len(rows) == 1
    got = rows[("a", "ns")]
    assert [dict(s.labels) for s in got] == [labels for labels, _ in expected]
    assert [repr(s.value) for s in got] == [repr(value) for _, value in expected]
    assert rows.get(("b", "ns")) is None
    assert ("b", "ns") not in rows


def test_a_fleets_grouped_answer_adds_almost_nothing_for_the_garbage_collector_to_walk() -> None:
    """Each full collection walks every tracked object while the event loop waits; a fleet's answer, kept for
    its age, must not add a tracked object (a Sample, a list) per target."""
    targets = 10_000
    raw = [
        {
            "metric": {"destination_service_name": f"svc-{i}", "destination_service_namespace": "fleet"},
            "value": [1, str(i / targets)],
        }
        for i in range(targets)
    ]
    gc.collect()
    before = len(gc.get_objects())
    rows = rows_from_result("q", raw, GROUP)
    gc.collect()
    added = len(gc.get_objects()) - before
    assert len(rows) == targets
    assert added < 10, added
    assert rows[("svc-42", "fleet")] == [Sample({}, 42 / targets)]


def test_a_scalar_or_an_empty_grouped_answer() -> None:
    assert rows_from_result("q", [1700000000.5, "42"], GROUP) == {("", ""): [Sample(labels={}, value=42.0)]}
    assert rows_from_result("q", [], GROUP) == {}


def test_metrics_error_names_query_and_reason() -> None:
    error = MetricsError('sum(x{a="b"})', "connection refused")
    assert (error.query, error.reason) == ('sum(x{a="b"})', "connection refused")
    assert 'sum(x{a="b"})' in str(error)
    assert "connection refused" in str(error)


# ---- Secret credentials


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"token": b64("abc.def")}, PrometheusAuth(bearer_token="abc.def")),
        ({"token": b64("abc.def\n")}, PrometheusAuth(bearer_token="abc.def")),  # --from-file newline
        (
            {"username": b64("sre"), "password": b64("p@ss word")},
            PrometheusAuth(basic_auth=("sre", "p@ss word")),
        ),
        ({"token": b64("t"), "ca.crt": b64("PEM")}, PrometheusAuth(bearer_token="t")),
    ],
)
def test_secret_data_gives_credentials(data: dict[str, str], expected: PrometheusAuth) -> None:
    assert auth_from_secret_data(data) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "keys found: none"),
        (None, "keys found: none"),
        ({"username": b64("sre")}, "keys found: username"),
        ({"password": b64("x")}, "keys found: password"),
        (
            {"token": b64("t"), "username": b64("u"), "password": b64("p")},
            "keys found: password, token, username",
        ),
        ({"bearer": b64("t")}, "keys found: bearer"),
    ],
)
def test_unusable_secret_data_names_the_expected_keys(data: dict[str, str] | None, message: str) -> None:
    with pytest.raises(ValueError, match="`token`") as refused:
        auth_from_secret_data(data)
    assert "`username` and `password`" in str(refused.value)
    assert message in str(refused.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [({"token": "not base64!"}, "'token' is not base64"), ({"token": b64("\n")}, "'token' is empty")],
)
def test_bad_secret_values_are_named(data: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auth_from_secret_data(data)
