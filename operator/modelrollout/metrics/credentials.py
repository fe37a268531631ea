"""Prometheus credentials from a Secret, and where they may be sent. Pure.

Anyone who may write a ModelRollout chooses `spec.analysis.prometheus.address`; the Secret it names may belong
to someone else. So a Secret's token or password goes only to an address the operator's own configuration
allows: the operator's `--prometheus-url`, one of its `--prometheus-credentials-allow` addresses, or the
address the Secret itself names in its `address` key (whoever may write the Secret owns the credential). The
messages here name Secrets and addresses, never a credential.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

ADDRESS_KEY = "address"
_SECRET_FORMS = "either `token` (bearer token) or `username` and `password` (basic auth)"  # noqa: S105
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class PrometheusAuth:
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None

    def __repr__(self) -> str:  # never the credential itself, wherever an object ends up printed
        kind = "bearer token" if self.bearer_token else "basic auth" if self.basic_auth else "none"
        return f"PrometheusAuth(<{kind}>)"


def auth_from_secret_data(data: Mapping[str, str] | None) -> PrometheusAuth:
    """Credentials from a Kubernetes Secret's `data` (base64 values). Keys other than the three are ignored
    (a Secret may also carry its `address` or a CA bundle); an ambiguous or incomplete set is a ValueError."""
    data = data or {}
    present = sorted(key for key in ("token", "username", "password") if key in data)
    if present == ["token"]:
        return PrometheusAuth(bearer_token=_decode(data, "token"))
    if present == ["password", "username"]:
        return PrometheusAuth(basic_auth=(_decode(data, "username"), _decode(data, "password")))
    found = ", ".join(sorted(data)) or "none"
    raise ValueError(f"the Prometheus credentials Secret must hold {_SECRET_FORMS}; keys found: {found}")


def secret_address(data: Mapping[str, str] | None) -> str | None:
    """The Prometheus address a credentials Secret says it belongs to (key `address`), if it names one."""
    if not data or ADDRESS_KEY not in data:
        return None
    return _decode(data, ADDRESS_KEY)


def _decode(data: Mapping[str, str], key: str) -> str:
    try:
        value = base64.b64decode(data[key], validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as bad:
        raise ValueError(f"Secret key {key!r} is not base64-encoded UTF-8 text: {bad}") from None
    # Secrets made with `kubectl create secret --from-file` from an editor-saved file end in a newline that
    # is never part of the credential.
    value = value.rstrip("\r\n")
    if not value:
        raise ValueError(f"Secret key {key!r} is empty")
    return value


def normalized_address(address: str) -> tuple[str, str, int, str] | None:
    """Scheme, host, port and path of an http(s) base URL, as compared: case-insensitive scheme and host,
    the scheme's default port filled in, no trailing slash, no user info, query or fragment. None if it is
    not an http(s) URL."""
    try:
        parts = urlsplit(address.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], parts.path.rstrip("/")


def shown(address: str) -> str:
    """An address as messages show it: without any user info (`http://user:password@host` is a URL too)."""
    return redacted(address.strip().rstrip("/"))


_USER_INFO = re.compile(r"(?<=//)[^/@\s]*@")


def redacted(text: str) -> str:
    """`text` with the user info of any URL in it removed."""
    return _USER_INFO.sub("", text)


def same_address(one: str, other: str) -> bool:
    first = normalized_address(one)
    return first is not None and first == normalized_address(other)


def credentials_refusal(
    address: str, secret_name: str, data: Mapping[str, str] | None, allowed: Iterable[str]
) -> str | None:
    """Why the credentials of Secret `secret_name` (its `data`) must not be sent to `address`, or None when
    they may: `address` is one the operator allows, or the one the Secret names."""
    if any(same_address(address, allowed_address) for allowed_address in allowed):
        return None
    try:
        own = secret_address(data)
    except ValueError as bad:
        return f"Secret {secret_name} names no usable `{ADDRESS_KEY}`: {bad}"
    if own is not None:
        if same_address(address, own):
            return None
        return (
            f"the credentials of Secret {secret_name} are not sent to {shown(address)}: the Secret "
            f"belongs to {shown(own)} (its `{ADDRESS_KEY}` key)"
        )
    return (
        f"the credentials of Secret {secret_name} are not sent to {shown(address)}: the operator does not "
        f"allow that address for credentials; name it in the Secret's `{ADDRESS_KEY}` key, or ask the "
        "operator's administrator to add it to --prometheus-credentials-allow"
    )
