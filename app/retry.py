"""The one retry policy: exponential backoff with jitter, capped, and a bounded retry loop.

Every place that tries again uses these: the worker after an SES error (``backoff``), the
worker's database calls on the way to and from SES (``retrying``), a lost claim or LISTEN
connection. Pure but for the sleep in ``retrying``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def backoff(attempt: int, *, first: float, cap: float, jitter: bool = True) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` from 1): ``first`` doubled per
    attempt, at most ``cap``; with jitter, a random 50-100 % of that, so that many mails or
    workers failing together do not come back together."""
    ceiling = min(cap, first * 2.0 ** max(0, attempt - 1))
    if not jitter:
        return ceiling
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)


async def retrying(
    operation: Callable[[], Awaitable[T]], *, within: float, first: float = 0.5, cap: float = 5.0
) -> T:
    """``operation``, tried again with backoff for ``within`` seconds, then its error."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    attempt = 0
    while True:
        try:
            return await operation()
        except Exception:
            if loop.time() > deadline:
                raise
            attempt += 1
            await asyncio.sleep(backoff(attempt, first=first, cap=cap, jitter=False))
