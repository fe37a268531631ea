"""EnvoyFilters that insert an HTTP Lua filter into client sidecars, run the way Envoy runs them: the filter's
own `inlineCode` in LuaJIT 2.1 (Envoy's Lua runtime), its `envoy_on_request` called with a stream handle
before the route is chosen, on the headers the client sent.

Which filters apply to a request follows Istio: an EnvoyFilter in the client's namespace (or in the mesh's
root namespace, `istio-system`), without a workloadSelector or with one whose labels the client workload has
(a simulated client has the one label `app: <workload>`), with a patch that adds `envoy.filters.http.lua` to
HTTP filters in the SIDECAR_OUTBOUND (or ANY) context. They run in Istio's order: root namespace first, then
by priority, creation time and name.

The handle offers what the project's filters use of Envoy's documented stream handle API:
`handle:headers()` with `get` (repeated headers joined by ","), `add`, `replace`, `remove`, and
`handle:clearRouteCache()`, plus `logInfo`/`logWarn`; anything else is an error, as in Envoy. Header names
are case-insensitive; the request's `:authority` is its host (and port, if any). A filter whose code does not
load or raises is skipped for that request and counted in `errors`, as Envoy would fail the request's filter
(here the request goes on unchanged, and tests assert no errors).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lupa import luajit21 as lupa

ROOT_NAMESPACE = "istio-system"
LUA_FILTER = "envoy.filters.http.lua"
_CONTEXTS = ("SIDECAR_OUTBOUND", "ANY")

# Envoy's header object over a list of {name, value} pairs: `get` (repeated headers joined by ","), `add`,
# `replace`, `remove`; names case-insensitive; anything else is an error. One definition for the simulator
# and the unit tests of the filter's Lua: `local headers, current = ENVOY_HEADERS(list)`.
ENVOY_HEADERS_LUA = """
local envoy_strict = {__index = function(_, name) error("no such Envoy API: " .. tostring(name)) end}
local function ENVOY_HEADERS(list)
  local headers = {}
  function headers:get(key)
    local values = {}
    for _, kv in ipairs(list) do
      if kv[1] == string.lower(key) then values[#values + 1] = kv[2] end
    end
    if #values == 0 then return nil end
    return table.concat(values, ",")
  end
  function headers:add(key, value)
    assert(type(key) == "string" and type(value) == "string", "add(key, value) takes strings")
    list[#list + 1] = {string.lower(key), value}
  end
  function headers:remove(key)
    local kept = {}
    for _, kv in ipairs(list) do
      if kv[1] ~= string.lower(key) then kept[#kept + 1] = kv end
    end
    list = kept
  end
  function headers:replace(key, value)
    self:remove(key)
    self:add(key, value)
  end
  setmetatable(headers, envoy_strict)
  return headers, function() return list end
end
"""

_HARNESS = (
    ENVOY_HEADERS_LUA
    + """
return function(flat)
  local list = {}
  for i = 1, #flat, 2 do list[#list + 1] = {string.lower(flat[i]), flat[i + 1]} end
  local headers, current = ENVOY_HEADERS(list)
  local handle = {}
  function handle:headers() return headers end
  function handle:clearRouteCache() end
  function handle:logInfo(message) end
  function handle:logWarn(message) end
  setmetatable(handle, envoy_strict)
  envoy_on_request(handle)
  local out = {}
  for _, kv in ipairs(current()) do
    out[#out + 1] = kv[1]
    out[#out + 1] = kv[2]
  end
  return out
end
"""
)


@dataclass
class _Compiled:
    run: Callable[[Any], Any]
    runtime: Any
    lock: threading.Lock


def _lua_codes(envoy_filter: Mapping[str, Any]) -> list[str]:
    codes = []
    for patch in (envoy_filter.get("spec") or {}).get("configPatches") or []:
        if patch.get("applyTo") != "HTTP_FILTER":
            continue
        if ((patch.get("match") or {}).get("context") or "ANY") not in _CONTEXTS:
            continue
        value = (patch.get("patch") or {}).get("value") or {}
        if value.get("name") != LUA_FILTER:
            continue
        config = value.get("typed_config") or value.get("typedConfig") or {}
        code = config.get("inlineCode") or config.get("inline_code")
        if isinstance(code, str):
            codes.append(code)
    return codes


def _selects(envoy_filter: Mapping[str, Any], workload: str) -> bool:
    selector = (envoy_filter.get("spec") or {}).get("workloadSelector")
    if not selector:
        return True
    labels = {"app": workload}
    return all(labels.get(key) == value for key, value in (selector.get("labels") or {}).items())


def _order(envoy_filter: Mapping[str, Any]) -> tuple[int, int, str, str]:
    meta = envoy_filter.get("metadata") or {}
    return (
        0 if meta.get("namespace") == ROOT_NAMESPACE else 1,
        int((envoy_filter.get("spec") or {}).get("priority") or 0),
        str(meta.get("creationTimestamp") or ""),
        str(meta.get("name") or ""),
    )


class LuaFilters:
    """Runs the Lua filters of the live EnvoyFilters (`source`, e.g. a watcher's snapshot) on requests."""

    def __init__(self, source: Callable[[], Sequence[Mapping[str, Any]]]) -> None:
        self._source = source
        self._compiled: dict[tuple[str, str, str, int], _Compiled | None] = {}
        self._lock = threading.RLock()
        self.errors = 0
        self.last_error: str | None = None

    def apply(
        self, headers: Mapping[str, str], authority: str, namespace: str, workload: str
    ) -> dict[str, str]:
        """The request headers after every applicable Lua filter ran on them (`:authority` is not kept)."""
        filters = sorted(
            (
                f
                for f in self._source()
                if (f.get("metadata") or {}).get("namespace") in (namespace, ROOT_NAMESPACE)
                and _selects(f, workload)
            ),
            key=_order,
        )
        current = dict(headers)
        for envoy_filter in filters:
            for index, code in enumerate(_lua_codes(envoy_filter)):
                compiled = self._compile(envoy_filter, index, code)
                if compiled is not None:
                    current = self._run(compiled, current, authority)
        return current

    def _compile(self, envoy_filter: Mapping[str, Any], index: int, code: str) -> _Compiled | None:
        meta = envoy_filter.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")), str(meta.get("resourceVersion")), index)
        with self._lock:
            if key in self._compiled:
                return self._compiled[key]
            try:
                runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
                runtime.execute(code)
                compiled: _Compiled | None = _Compiled(runtime.execute(_HARNESS), runtime, threading.Lock())
            except lupa.LuaError as failed:
                self._failed(f"EnvoyFilter {key[0]}/{key[1]} does not load: {failed}")
                compiled = None
            # Older versions of the same filter are dropped with their runtimes.
            for old in [k for k in self._compiled if k[:2] == key[:2] and k[2] != key[2]]:
                del self._compiled[old]
            self._compiled[key] = compiled
            return compiled

    def _run(self, compiled: _Compiled, headers: Mapping[str, str], authority: str) -> dict[str, str]:
        flat: list[str] = [":authority", authority]
        for name, value in headers.items():
            flat += [name, value]
        with compiled.lock:  # a Lua state is single-threaded
            try:
                out = compiled.run(compiled.runtime.table_from(flat))
            except lupa.LuaError as failed:
                self._failed(f"a Lua filter raised: {failed}")
                return dict(headers)
            values = [out[i] for i in range(1, len(out) + 1)]
        result: dict[str, str] = {}
        for name, value in zip(values[::2], values[1::2], strict=True):
            if name != ":authority":
                result[str(name)] = str(value)
        return result

    def _failed(self, message: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = message
