"""Retention: link tokens dropped once a mail can no longer go out, old mail deleted."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.retention.service import purge
from tests.conditions import eventually
from tests.emails.test_router import body, drain
from tests.ses import MotoSes


async def _accept(client: httpx.AsyncClient, auth: dict[str, str], to: str, kind: str) -> uuid.UUID:
    answer = await client.post(f"/emails/{kind}", json=body(to, kind), headers=auth)
    assert answer.status_code == 202
    return uuid.UUID(answer.json()["id"])


async def _params(engine: AsyncEngine, message_id: uuid.UUID) -> object:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT params FROM message WHERE id = :id"), {"id": message_id}
            )
        ).scalar_one_or_none()


async def test_link_tokens_are_dropped_once_the_mail_cannot_go_out_again(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    expired_link = await _accept(client, auth, "a@example.com", "password-reset")
    live_link = await _accept(client, auth, "b@example.com", "verify-email")
    no_expiry = await _accept(client, auth, "c@example.com", "matching-notification")
    old_no_expiry = await _accept(client, auth, "d@example.com", "matching-notification")
    await drain(client)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE message SET expires_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": expired_link},
        )
        await conn.execute(
            text("UPDATE message SET sent_at = now() - interval '73 hours' WHERE id = :id"),
            {"id": old_no_expiry},
        )

    purged = await purge(engine, retention_days=400)

    assert purged.params == 2
    assert await _params(engine, expired_link) is None
    assert await _params(engine, old_no_expiry) is None
    # Still resendable after a soft bounce: the link stays until it expires.
    assert await _params(engine, live_link) is not None
    assert await _params(engine, no_expiry) is not None


async def test_mail_older_than_retention_is_deleted_but_waiting_mail_is_kept(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    old_sent = await _accept(client, auth, "a@example.com", "matching-notification")
    await drain(client)
    old_waiting = await _accept(client, auth, "b@example.com", "matching-notification")
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE message SET created_at = now() - interval '401 days'"))
        await conn.execute(
            text(
                "INSERT INTO sns_message (message_id, type, topic_arn, outcome, received_at) "
                "VALUES ('old', 'Notification', 't', 'applied', now() - interval '31 days'),"
                " ('new', 'Notification', 't', 'applied', now())"
            )
        )

    purged = await purge(engine, retention_days=400)

    assert (purged.messages, purged.sns_messages) == (1, 1)
    shown_old = await client.get(f"/emails/{old_sent}", headers=auth)
    assert shown_old.status_code == 404
    assert (await client.get(f"/emails/{old_waiting}", headers=auth)).status_code == 200
    async with engine.connect() as conn:
        events = (
            await conn.execute(
                text("SELECT count(*) FROM message_event WHERE message_id = :id"), {"id": old_sent}
            )
        ).scalar_one()
        remaining_sns = (
            (await conn.execute(text("SELECT message_id FROM sns_message"))).scalars().all()
        )
    assert events == 0
    assert remaining_sns == ["new"]


async def test_a_days_delete_is_vacuumed_within_about_a_day_not_eighty(engine: AsyncEngine) -> None:
    # Retention deletes a 400th of a table that keeps 400 days each day: at PostgreSQL's
    # default scale factor (0.2) autovacuum would free that space for new mail after 80 days.
    async with engine.connect() as conn:
        found = await conn.execute(
            text(
                "SELECT relname, reloptions FROM pg_class "
                "WHERE relname IN ('message', 'message_event')"
            )
        )
        options: dict[str, list[str]] = {row.relname: row.reloptions for row in found}
    assert options == {
        "message": ["autovacuum_vacuum_scale_factor=0.002"],
        "message_event": ["autovacuum_vacuum_scale_factor=0.002"],
    }


async def _index_scans(engine: AsyncEngine, index: str) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(
            text("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = :index"),
            {"index": index},
        )
        return int(found.scalar_one())


async def test_spent_link_params_are_found_through_their_index_not_every_mail_kept(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, ses: MotoSes
) -> None:
    sent = await _accept(client, auth, "a@example.com", "password-reset")
    await drain(client)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE message SET expires_at = now() - interval '1 minute' WHERE id = :id"),
            {"id": sent},
        )
    before = await _index_scans(engine, "ix_message_with_params")
    # With a scan of the table priced out, the planner reads the index only if the purge's
    # condition lets it: a year of mail (bench/year.py) must not be read every ten minutes.
    no_scan = create_async_engine(
        engine.url.render_as_string(hide_password=False),
        connect_args={"server_settings": {"enable_seqscan": "off"}},
    )
    try:
        purged = await purge(no_scan, retention_days=400)
    finally:
        await no_scan.dispose()  # its backend ends and hands in its statistics

    assert purged.params == 1
    assert await _params(engine, sent) is None

    async def used() -> bool:
        return await _index_scans(engine, "ix_message_with_params") > before

    assert await eventually(used)
