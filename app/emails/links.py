"""Links in a mail: the app's params (https on an allowed host only, so a leaked key cannot
make us a phishing relay) and the unsubscribe link, which the worker asks for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

MAX_LINK_LENGTH = 2048


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    for pattern in allowed:
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


def link_problem(url: str, *, allowed_hosts: Sequence[str]) -> str | None:
    """Why this link may not go into a mail, or None when it may."""
    if len(url) > MAX_LINK_LENGTH:
        return f"longer than {MAX_LINK_LENGTH} characters"
    # Not printable: control characters, and invisible ones (bidi overrides, zero-width, lone
    # surrogates) that can disguise a link or cannot even be stored.
    if any(ch.isspace() or not ch.isprintable() for ch in url) or "\\" in url:
        return "contains white space, a backslash, or a control or invisible character"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "not a valid URL"
    if parts.scheme != "https":
        return "must be an https:// link"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not contain user information"
    host = (parts.hostname or "").rstrip(".")
    if not host or not host_allowed(host, allowed_hosts):
        return "host is not in TEGAMI_LINK_HOSTS"
    if port is not None and port != 443:
        return "must not name a port"
    return None


def params_problems(
    params: Mapping[str, str], *, required: Sequence[str], allowed_hosts: Sequence[str]
) -> dict[str, str]:
    """Each wrong param with what is wrong; empty when all is well."""
    problems = {name: "required" for name in required if name not in params}
    for name, value in params.items():
        if name not in required:
            problems[name] = "unknown parameter for this type of mail"
        elif (problem := link_problem(value, allowed_hosts=allowed_hosts)) is not None:
            problems[name] = problem
    return problems


class UnsubscribeLinks(Protocol):
    """The unsubscribe link of one mail, minted by app.unsubscribe (it holds the secret; the
    worker only puts the link in the mail)."""

    def __call__(self, *, recipient_id: int, category: str, now: datetime) -> str: ...
