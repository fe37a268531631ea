"""The Envoy HTTP Lua filter that puts a user's sticky bucket in a request header.

With `experiment.stickiness.userHeader` set, the mesh computes the bucket itself: this filter reads the user
id header, computes `modelrollout.assign.bucket(experiment_id, user_id)` and sets the bucket header to it, so
that the VirtualService's bucket routes (`modelrollout.routing.buckets`) send the user to the same variant on
every request and, as the canary weight rises, move the user stable -> canary at most once.

The bucket header is always the filter's, never the client's:

- with a (non-empty) user id, every client-sent copy of the bucket header is removed and exactly one, the
  computed bucket, is added; otherwise a client could pick its variant by sending `x-user-bucket: 0`, and a
  duplicate header could reach the route match;
- without a user id (absent or empty), every copy is removed, so the request follows the weighted route;
  an empty id is no id (it would otherwise put every anonymous request in one bucket).

A user id sent more than once is what Envoy's `headers:get()` returns for it: the values joined with ",".
The route is recomputed after the headers change (`clearRouteCache()`, called in a `pcall` because Envoy
versions before the call was added lack it); the filter makes no other call and keeps no state between
requests.

Envoy runs LuaJIT 2.1 (Lua 5.1): the MD5 here is pure Lua over the `bit` library (`band`, `bor`, `bxor`,
`bnot`, `lshift`, `rshift`, `rol`, `tobit`), with no `string.pack` and no Lua 5.3 integer operators. The
128-bit digest is reduced mod 100 byte by byte, big-endian (`r = (r * 256 + byte) % 100`), which equals the
unsigned big-endian integer mod 100 that `assign.bucket()` takes. MD5 is for a stable, cross-language
assignment, not for security (see `modelrollout.assign`).

The experiment id (free text from the spec) and the header names are embedded as Lua string literals in which
every byte outside `[A-Za-z0-9 _.:/-]` is a three-digit decimal escape, so no id can end the literal or the
line. Header names must be HTTP tokens; they are lowercased, as Envoy stores them.

Pure: builds source text, no I/O (the import-linter contract "the core is pure" covers this module).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SAFE_LUA_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _.:/-")
# RFC 9110 token: the characters a header field name may have.
_HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def lua_string(value: str) -> str:
    """A double-quoted Lua 5.1 string literal for the UTF-8 bytes of value.

    Bytes in `[A-Za-z0-9 _.:/-]` stand for themselves, every other byte is a three-digit decimal escape
    (`\\034` for a double quote), so the literal has no quote, backslash sequence other than `\\ddd`,
    bracket or line break of its own.
    """
    escaped = (chr(b) if b in _SAFE_LUA_BYTES else f"\\{b:03d}" for b in value.encode("utf-8"))
    return '"' + "".join(escaped) + '"'


# The assignment as a Lua chunk that returns {md5_hex = ..., bucket = ...}; the filter embeds it, the tests
# load it on its own. K[i] = floor(abs(sin(i)) * 2^32) (RFC 1321), written out rather than computed so that
# no platform's sin() can change a bucket.
ASSIGN_LUA = """\
local bit = bit or require("bit")
local band, bor, bxor, bnot = bit.band, bit.bor, bit.bxor, bit.bnot
local lshift, rshift, rol, tobit = bit.lshift, bit.rshift, bit.rol, bit.tobit
local byte, char, rep, format, floor = string.byte, string.char, string.rep, string.format, math.floor

local K = {
  0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
  0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
  0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
  0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
  0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
  0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
  0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
  0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
}
local S = {
  7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
  5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
  4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
  6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
}

local function le_bytes(x)
  return char(band(x, 255), band(rshift(x, 8), 255), band(rshift(x, 16), 255), band(rshift(x, 24), 255))
end

-- MD5 (RFC 1321) of a byte string, as the four state words A, B, C, D (signed 32-bit numbers).
local function md5_words(message)
  local length = #message
  local bits = length * 8
  local padded = message .. "\\128" .. rep("\\0", (55 - length) % 64)
    .. le_bytes(bits % 4294967296) .. le_bytes(floor(bits / 4294967296))
  local a0, b0, c0, d0 = tobit(0x67452301), tobit(0xefcdab89), tobit(0x98badcfe), tobit(0x10325476)
  local X = {}
  for chunk = 1, #padded, 64 do
    for j = 0, 15 do
      local p = chunk + j * 4
      local b1, b2, b3, b4 = byte(padded, p, p + 3)
      X[j] = bor(b1, lshift(b2, 8), lshift(b3, 16), lshift(b4, 24))
    end
    local a, b, c, d = a0, b0, c0, d0
    for i = 0, 63 do
      local f, g
      if i < 16 then
        f, g = bor(band(b, c), band(bnot(b), d)), i
      elseif i < 32 then
        f, g = bor(band(d, b), band(bnot(d), c)), (5 * i + 1) % 16
      elseif i < 48 then
        f, g = bxor(b, c, d), (3 * i + 5) % 16
      else
        f, g = bxor(c, bor(b, bnot(d))), (7 * i) % 16
      end
      a, d, c, b = d, c, b, tobit(b + rol(tobit(a + f + K[i + 1] + X[g]), S[i + 1]))
    end
    a0, b0, c0, d0 = tobit(a0 + a), tobit(b0 + b), tobit(c0 + c), tobit(d0 + d)
  end
  return a0, b0, c0, d0
end

-- The 16 digest bytes, in digest order.
local function md5_digest(message)
  local a, b, c, d = md5_words(message)
  return le_bytes(a) .. le_bytes(b) .. le_bytes(c) .. le_bytes(d)
end

local function md5_hex(message)
  local digest = md5_digest(message)
  local out = {}
  for i = 1, 16 do
    out[i] = format("%02x", byte(digest, i))
  end
  return table.concat(out)
end

-- modelrollout.assign.bucket: the digest as an unsigned big-endian integer, mod 100.
local function bucket(experiment_id, user_id)
  local digest = md5_digest(experiment_id .. ":" .. user_id)
  local r = 0
  for i = 1, 16 do
    r = (r * 256 + byte(digest, i)) % 100
  end
  return r
end

return {md5_hex = md5_hex, bucket = bucket}
"""

_FILTER_LUA = """\
-- modelrollout: the sticky bucket of the user in {user_header}, for experiment {experiment_comment},
-- in {bucket_header}.
-- Generated by modelrollout.routing.bucket_lua; the bucket is modelrollout.assign.bucket().
local assign = (function()
{library}end)()

local EXPERIMENT_ID = {experiment_id}
local USER_HEADER = {user_header}
local BUCKET_HEADER = {bucket_header}
-- The request hosts (authority without port, lower case) the filter acts on; nil: every request.
local HOSTS = {hosts}

local function in_scope(headers)
  if HOSTS == nil then return true end
  local authority = headers:get(":authority")
  if authority == nil then return false end
  local host = (string.gsub(string.lower(authority), ":%d+$", ""))
  return HOSTS[host] == true
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  -- Requests to other services keep their headers: the bucket is this experiment's.
  if not in_scope(headers) then return end
  local user_id = headers:get(USER_HEADER)
  -- Whatever the client sent in the bucket header goes: only this filter chooses a variant.
  headers:remove(BUCKET_HEADER)
  if user_id ~= nil and user_id ~= "" then
    headers:add(BUCKET_HEADER, string.format("%d", assign.bucket(EXPERIMENT_ID, user_id)))
  end
  -- The route may have been chosen before the headers changed; Envoy without clearRouteCache() has none.
  pcall(function() request_handle:clearRouteCache() end)
end
"""


def _header_name(name: str, what: str) -> str:
    if not _HTTP_TOKEN.fullmatch(name):
        raise ValueError(f"{what} must be an HTTP header name (token characters only), got {name!r}")
    return name.lower()


def bucket_filter_lua(
    bucket_header: str, user_header: str, experiment_id: str, hosts: Sequence[str] | None = None
) -> str:
    """The source of an Envoy HTTP Lua filter that sets bucket_header to the bucket of the user_header's user.

    With `hosts`, only requests whose authority (port dropped, lower case) is one of them are touched; a
    request to any other service passes unchanged (the filter runs on every outbound request of a sidecar).

    `envoy_on_request` removes every client-sent bucket_header and, when user_header is present and not
    empty, adds bucket_header with `modelrollout.assign.bucket(experiment_id, user_id)` in decimal. The script
    defines no global other than `envoy_on_request`. Raises ValueError for a header name that is not an HTTP
    token, or the same header for both.
    """
    bucket = _header_name(bucket_header, "the bucket header")
    user = _header_name(user_header, "the user header")
    if bucket == user:
        raise ValueError(f"the bucket header and the user header must differ, both are {bucket!r}")
    return _FILTER_LUA.format(
        library=ASSIGN_LUA,
        # Comments get the escaped forms too (a literal's text has no line break).
        experiment_comment=lua_string(experiment_id),
        experiment_id=lua_string(experiment_id),
        user_header=lua_string(user),
        bucket_header=lua_string(bucket),
        hosts="nil" if hosts is None else _lua_set(hosts),
    )


def _lua_set(hosts: Sequence[str]) -> str:
    entries = ", ".join(f"[{lua_string(host.lower())}] = true" for host in sorted(set(hosts)))
    return "{" + entries + "}"
