"""The Envoy Lua bucket filter, run in LuaJIT 2.1 (Envoy's runtime) against a fake of Envoy's header API.

The fake mirrors the documented stream handle and header object API (`handle:headers()`,
`headers:get/add/replace/remove`, `handle:clearRouteCache()`): names are case-insensitive, `get` joins
repeated headers with ",", and any other method is an error, so the filter cannot lean on something Envoy
lacks.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lupa import luajit21 as lupa  # Envoy runs LuaJIT 2.1; lupa is a test dependency: missing, it fails

from modelrollout.assign import bucket
from modelrollout.routing.bucket_lua import ASSIGN_LUA, bucket_filter_lua, lua_string
from modelrollout_dev.sim.lua_filters import ENVOY_HEADERS_LUA

BUCKET = "x-user-bucket"
USER = "x-user-id"
EXPERIMENT = "exp-claude-migration-v1"
HOSTILE = 'x"]] .. os.exit() --\n]]\'"\\ \r\0 \u00e9\u4e2d\U0001f600' + "\\034" + "y" * 200

FAKE_ENVOY = (
    ENVOY_HEADERS_LUA
    + """
local function new_handle(with_clear_route_cache, ...)
  local list, args = {}, {...}
  for i = 1, #args, 2 do list[#list + 1] = {string.lower(args[i]), args[i + 1]} end
  local cleared = 0
  local headers, current = ENVOY_HEADERS(list)
  local handle = {}
  function handle:headers() return headers end
  if with_clear_route_cache then
    function handle:clearRouteCache() cleared = cleared + 1 end
  end
  setmetatable(handle, envoy_strict)
  return handle, function() return current(), cleared end
end

-- Runs envoy_on_request on a request with the given header name/value pairs; returns the bucket header's
-- values joined with "|" (nil if none), how many there are, and how often the route cache was cleared.
return function(bucket_header, with_clear_route_cache, ...)
  local handle, state = new_handle(with_clear_route_cache, ...)
  envoy_on_request(handle)
  local list, cleared = state()
  local values = {}
  for _, kv in ipairs(list) do
    if kv[1] == bucket_header then values[#values + 1] = kv[2] end
  end
  if #values == 0 then return nil, 0, cleared end
  return table.concat(values, "|"), #values, cleared
end
"""
)

Run = Callable[..., tuple[Any, int, int]]


def load_filter(source: str) -> tuple[Any, Run]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.execute(source)
    return lua, lua.execute(FAKE_ENVOY)


@pytest.fixture(scope="module")
def md5_lib() -> Any:
    return lupa.LuaRuntime(unpack_returned_tuples=True).execute(ASSIGN_LUA)


@pytest.fixture(scope="module")
def run() -> Run:
    return load_filter(bucket_filter_lua(BUCKET, USER, EXPERIMENT))[1]


def as_bytes(s: str) -> bytes:
    return s.encode("utf-8")


# --- MD5 ----------------------------------------------------------------------------------------------------

RFC_1321_VECTORS = [
    ("", "d41d8cd98f00b204e9800998ecf8427e"),
    ("a", "0cc175b9c0f1b6a831c399e269772661"),
    ("abc", "900150983cd24fb0d6963f7d28e17f72"),
    ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
    ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
    ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "d174ab98d277d9f5a5611c2c9f419d9f"),
    ("1234567890" * 8, "57edf4a22be3c955ac49da2e2107b67a"),
]


@pytest.mark.parametrize(("message", "digest"), RFC_1321_VECTORS)
def test_md5_rfc_1321_vectors(md5_lib: Any, message: str, digest: str) -> None:
    assert md5_lib.md5_hex(as_bytes(message)) == digest


def test_md5_around_every_padding_boundary(md5_lib: Any) -> None:
    rng = random.Random(1321)  # noqa: S311  (repeatable test data, not secrets)
    for length in [*range(200), 1000, 1024, 4096]:
        message = rng.randbytes(length)
        assert md5_lib.md5_hex(message) == hashlib.md5(message, usedforsecurity=False).hexdigest(), length


# --- Lua string literals ------------------------------------------------------------------------------------

LITERAL = re.compile(r'"(?:[A-Za-z0-9 _.:/-]|\\[0-9]{3})*"')


@given(st.text(max_size=300))
def test_lua_string_is_the_same_bytes_and_cannot_break_out(value: str) -> None:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        return
    literal = lua_string(value)
    assert LITERAL.fullmatch(literal)
    lua = lupa.LuaRuntime(encoding=None)
    assert lua.eval(literal) == data


def test_lua_string_escapes_a_hostile_id() -> None:
    literal = lua_string('x"]] .. os.exit() --\n')
    assert literal == '"x\\034\\093\\093 .. os.exit\\040\\041 --\\010"'


# --- The filter ---------------------------------------------------------------------------------------------


def user_ids() -> Iterator[str]:
    rng = random.Random(100)  # noqa: S311  (repeatable test data, not secrets)
    printable = [chr(c) for c in range(32, 127)]
    unicode_chars = [*printable, "é", "ß", "中", "文", "Ω", "😀", "\u200b", "\u0301"]
    for i in range(10_000):
        kind = i % 5
        if kind == 0:
            yield "".join(rng.choices(printable, k=rng.randint(1, 40)))
        elif kind == 1:
            yield "".join(rng.choices(unicode_chars, k=rng.randint(1, 30)))
        elif kind == 2:
            yield "".join(rng.choices(printable, k=1024 + rng.randint(0, 64)))
        elif kind == 3:
            yield f'user:{i}:"quoted"\'s:{rng.random()}'
        else:
            yield f"{rng.getrandbits(128):032x}"  # a uuid-like id


def test_filter_bucket_equals_assign_bucket_for_10000_users(run: Run) -> None:
    seen = set()
    for user_id in user_ids():
        value, count, cleared = run(BUCKET, True, USER, as_bytes(user_id))
        assert (value, count, cleared) == (str(bucket(EXPERIMENT, user_id)), 1, 1), user_id
        seen.add(value)
    assert len(seen) == 100


def test_a_hostile_experiment_id_is_only_data() -> None:
    lua, run = load_filter(bucket_filter_lua(BUCKET, USER, HOSTILE))
    exits: list[object] = []
    lua.globals().os.exit = lambda *args: exits.append(args)
    for i, user_id in enumerate(user_ids()):
        if i == 2000:
            break
        assert run(BUCKET, True, USER, as_bytes(user_id))[0] == str(bucket(HOSTILE, user_id))
    assert exits == []


def test_the_script_defines_only_envoy_on_request() -> None:
    bare = lupa.LuaRuntime()
    before = set(bare.globals())
    bare.execute(bucket_filter_lua(BUCKET, USER, HOSTILE))
    assert set(bare.globals()) - before == {"envoy_on_request"}


@pytest.mark.parametrize(
    "client_buckets",
    [["0"], ["99", "0"], ["not-a-number"], [""]],
)
def test_a_client_sent_bucket_is_overwritten(run: Run, client_buckets: list[str]) -> None:
    headers: list[bytes] = []
    for value in client_buckets:
        headers += [b"X-User-Bucket", as_bytes(value)]  # any case: header names are case-insensitive
    value, count, _ = run(BUCKET, True, *headers, USER, b"alice")
    assert (value, count) == (str(bucket(EXPERIMENT, "alice")), 1)


@pytest.mark.parametrize("user_headers", [[], [USER, b""]])
def test_without_a_user_id_any_bucket_header_is_removed(run: Run, user_headers: list[Any]) -> None:
    assert run(BUCKET, True, *user_headers) == (None, 0, 1)
    assert run(BUCKET, True, BUCKET, b"0", *user_headers) == (None, 0, 1)
    assert run(BUCKET, True, BUCKET, b"0", BUCKET, b"7", *user_headers) == (None, 0, 1)


def test_a_repeated_user_id_is_the_joined_value(run: Run) -> None:
    value, count, _ = run(BUCKET, True, USER, b"alice", "X-User-Id", b"bob")
    assert (value, count) == (str(bucket(EXPERIMENT, "alice,bob")), 1)


def test_envoy_without_clear_route_cache_still_gets_the_bucket(run: Run) -> None:
    # The fake raises for any missing method, as a strict Envoy would; the filter tolerates its absence.
    assert run(BUCKET, False, USER, b"alice") == (str(bucket(EXPERIMENT, "alice")), 1, 0)


def test_other_headers_are_left_alone() -> None:
    lua, _ = load_filter(bucket_filter_lua(BUCKET, USER, EXPERIMENT))
    probe = lua.execute(
        FAKE_ENVOY.replace("if kv[1] == bucket_header then", "if kv[1] ~= bucket_header then")
    )
    value, count, _ = probe(BUCKET, True, "x-other", b"1", USER, b"alice", BUCKET, b"3")
    assert (value, count) == ("1|alice", 2)


def test_header_names_are_lowercased() -> None:
    _, run = load_filter(bucket_filter_lua("X-User-Bucket", "X-User-ID", EXPERIMENT))
    assert run(BUCKET, True, "x-user-id", b"alice")[0] == str(bucket(EXPERIMENT, "alice"))


@pytest.mark.parametrize(
    ("bucket_header", "user_header"),
    [("", USER), (BUCKET, ""), ("x user", USER), (BUCKET, ":authority"), ('x"', USER), (BUCKET, "x\n"),
     (BUCKET, BUCKET), ("X-User-Id", USER)],
)  # fmt: skip
def test_bad_header_names_are_refused(bucket_header: str, user_header: str) -> None:
    with pytest.raises(ValueError, match="header"):
        bucket_filter_lua(bucket_header, user_header, EXPERIMENT)


def test_the_source_is_deterministic() -> None:
    # The same spec gives the same filter, so a later write of the EnvoyFilter can be skipped when unchanged.
    assert bucket_filter_lua(BUCKET, USER, EXPERIMENT) == bucket_filter_lua(BUCKET, USER, EXPERIMENT)
    assert bucket_filter_lua(BUCKET, USER, EXPERIMENT) != bucket_filter_lua(BUCKET, USER, EXPERIMENT + "2")


# --- Scoped to the VirtualService's hosts -------------------------------------------------------------------

HOSTS = ["chat", "chat.llm", "chat.llm.svc.cluster.local"]


@pytest.mark.parametrize(
    ("authority", "acts"),
    [("chat", True), ("chat:8000", True), ("Chat.LLM", True), ("chat.llm.svc.cluster.local:80", True),
     ("other", False), ("chat.other", False), ("chatx", False), ("xchat", False), ("chat:", False),
     ("chat.llm.svc.cluster.local.evil", False), (None, False)],
)  # fmt: skip
def test_a_scoped_filter_acts_only_on_requests_to_its_hosts(authority: str | None, acts: bool) -> None:
    _, run = load_filter(bucket_filter_lua(BUCKET, USER, EXPERIMENT, HOSTS))
    headers: list[Any] = [] if authority is None else [":authority", as_bytes(authority)]
    value, count, cleared = run(BUCKET, True, *headers, USER, b"alice", BUCKET, b"7")
    if acts:
        assert (value, count, cleared) == (str(bucket(EXPERIMENT, "alice")), 1, 1)
    else:  # another service's request passes exactly as it came, the client's bucket header included
        assert (value, count, cleared) == ("7", 1, 0)


def test_a_scoped_filter_with_hostile_hosts_is_only_data() -> None:
    lua, run = load_filter(bucket_filter_lua(BUCKET, USER, EXPERIMENT, [HOSTILE, "chat"]))
    assert run(BUCKET, True, ":authority", b"chat", USER, b"bob")[0] == str(bucket(EXPERIMENT, "bob"))
    assert run(BUCKET, True, ":authority", as_bytes(HOSTILE.lower()), USER, b"bob")[1] == 1
    assert set(lua.globals()) >= {"envoy_on_request"}
