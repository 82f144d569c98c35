"""Keeping only what must be kept.

- Message params hold link tokens: they are dropped once the mail can no longer be sent again:
  final mail at once; sent mail when its link expires (a soft bounce may still resend it
  until then), or 72 hours after sending when it has no expiry.
- Message metadata and events are kept ``TEGAMI_RETENTION_DAYS`` for audit, then deleted.
- SNS MessageIds only need to outlive SNS's retries (days): kept 30 days.
Suppressions and the recipient audit trail are kept: they hold no address, only its keyed hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.emails import outbox
from app.sns import service as sns_service
from app.webhooks import deliveries as webhooks

log = logging.getLogger(__name__)

PURGE_EVERY_SECONDS = 600.0
BATCH = 1000


@dataclass(frozen=True)
class Purged:
    params: int
    messages: int
    sns_messages: int


async def purge(engine: AsyncEngine, *, retention_days: int) -> Purged:
    async with engine.begin() as conn:
        params = await outbox.drop_spent_params(conn)
        sns = await sns_service.forget_old_message_ids(conn)
        await webhooks.delete_old(conn, days=retention_days)
    messages = 0
    # Old mail in batches, each its own transaction, so a large backlog never holds locks long.
    while True:
        async with engine.begin() as conn:
            deleted = await outbox.delete_old(conn, days=retention_days, batch=BATCH)
        messages += deleted
        if deleted < BATCH:
            break
    result = Purged(params=params, messages=messages, sns_messages=sns)
    if params or messages or sns:
        log.info(
            "retention purge",
            extra={"event": "retention_purge", "params": params, "messages": messages, "sns": sns},
        )
    return result


async def purge_forever(
    engine: AsyncEngine, *, retention_days: int, stopping: asyncio.Event
) -> None:
    while not stopping.is_set():
        try:
            await purge(engine, retention_days=retention_days)
        except Exception as exc:  # the database may be away: next round
            log.warning(
                "retention purge failed", extra={"event": "retention_failed", "error": repr(exc)}
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=PURGE_EVERY_SECONDS)
