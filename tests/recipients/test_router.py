"""The recipient API through HTTP: state, erasure, suppressing and lifting by hand."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api_keys import create_key
from app.config import Settings
from app.db import create_sessionmaker
from app.models import ApiKeyScope, SuppressionReason
from app.recipients import service as recipients
from app.recipients.addresses import address_hash
from tests.ses import MotoSes
from tests.unsubscribe.test_router import ONE_CLICK, drain, send, unsubscribe_link

OPERATOR = "support-console"


@pytest.fixture
async def operator(engine: AsyncEngine) -> dict[str, str]:
    """An admin API key with a known name, to find in the audit trail."""
    async with create_sessionmaker(engine)() as session:
        key = await create_key(session, name=OPERATOR, scope=ApiKeyScope.ADMIN)
        await session.commit()
    return {"Authorization": f"Bearer {key}"}


async def complaint(engine: AsyncEngine, settings: Settings, address: str, detail: str) -> None:
    """What the SNS endpoint does for a complaint."""
    hashed = address_hash(address, secret=settings.address_hash_secret.get_secret_value())
    async with create_sessionmaker(engine)() as session:
        await recipients.suppress(
            session,
            address_hash=hashed,
            reason=SuppressionReason.COMPLAINT,
            cause="ses-feedback:0100018c-feedback",
            detail=detail,
        )
        await session.commit()


async def test_unknown_address_is_404(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    answer = await client.get("/recipients/nobody@example.com", headers=auth)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "recipient_not_found"


async def test_opt_out_shows_with_its_cause_whatever_the_case_of_the_address(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    await client.post(await unsubscribe_link(client, auth, ses), data=ONE_CLICK)

    for spelling in ("TARO@Example.com", "taro%40example.com"):
        answer = await client.get(f"/recipients/{spelling}", headers=auth)
        assert answer.status_code == 200, spelling
        state = answer.json()
        assert state["address"] == "taro@example.com"
        assert state["suppressed"] is None
        assert state["soft_bounce_count"] == 0
        [opt_out] = state["opt_outs"]
        assert opt_out["category"] == "matching"
        assert opt_out["cause"].startswith("unsubscribe:")
        assert [(e["action"], e["reason"]) for e in state["history"]] == [("opted_out", "matching")]


async def test_manual_suppression_blocks_every_mail_and_names_the_key(
    client: httpx.AsyncClient, operator: dict[str, str]
) -> None:
    assert (await send(client, operator, "password-reset")).status_code == 202

    answer = await client.put(
        "/recipients/Taro@example.com/suppression",
        json={"reason": "manual", "detail": "asked by phone to stop all mail"},
        headers=operator,
    )
    assert answer.status_code == 200
    suppressed = answer.json()["suppressed"]
    assert suppressed["reason"] == "manual"
    assert suppressed["cause"] == f"api_key:{OPERATOR}"
    assert suppressed["detail"] == "asked by phone to stop all mail"

    for kind in ("password-reset", "matching-notification"):
        refused = await send(client, operator, kind)
        assert refused.status_code == 409
        assert refused.json()["error"] == {
            "code": "suppressed",
            "message": "the address is suppressed",
            "reason": "manual",
        }

    # Again: harmless, and the first cause stays.
    again = await client.put("/recipients/taro@example.com/suppression", json={}, headers=operator)
    assert again.status_code == 200
    state = again.json()
    assert state["suppressed"]["detail"] == "asked by phone to stop all mail"
    assert [(e["action"], e["reason"], e["cause"]) for e in state["history"]] == [
        ("suppressed", "manual", f"api_key:{OPERATOR}")
    ]


async def test_lifting_a_suppression_lets_mail_go_again(
    client: httpx.AsyncClient, operator: dict[str, str], ses: MotoSes
) -> None:
    await client.put("/recipients/taro@example.com/suppression", json={}, headers=operator)
    assert (await send(client, operator, "password-reset")).status_code == 409

    lifted = await client.delete("/recipients/TARO@example.com/suppression", headers=operator)
    assert lifted.status_code == 200

    assert (await send(client, operator, "password-reset")).status_code == 202
    await drain(client)
    assert [mail.message["To"] for mail in ses.sent()] == ["taro@example.com"]

    state = (await client.get("/recipients/taro@example.com", headers=operator)).json()
    assert state["suppressed"] is None
    assert [(e["action"], e["cause"]) for e in state["history"]] == [
        ("suppressed", f"api_key:{OPERATOR}"),
        ("suppression_lifted", f"api_key:{OPERATOR}"),
    ]

    again = await client.delete("/recipients/taro@example.com/suppression", headers=operator)
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "suppression_not_found"


async def test_suppression_known_only_from_feedback_is_shown(
    client: httpx.AsyncClient, auth: dict[str, str], engine: AsyncEngine, settings: Settings
) -> None:
    await complaint(engine, settings, "hanako@example.com", "abuse report")

    state = (await client.get("/recipients/Hanako@Example.com", headers=auth)).json()
    assert state["address"] is None
    assert state["suppressed"]["reason"] == "complaint"
    assert state["suppressed"]["cause"] == "ses-feedback:0100018c-feedback"


async def test_erasure_forgets_the_address_but_a_complaint_still_blocks(
    client: httpx.AsyncClient,
    operator: dict[str, str],
    ses: MotoSes,
    engine: AsyncEngine,
    settings: Settings,
) -> None:
    accepted = await client.post(
        "/emails/password-reset",
        json={
            "to": "Taro@Example.com",
            "params": {"reset_url": "https://proworks.jp/reset?token=r1"},
            "user_id": "user_123",
        },
        headers=operator,
    )
    await drain(client)
    await complaint(engine, settings, "taro@example.com", "feedback from <Taro@Example.com>")

    erased = await client.delete("/recipients/taro@example.com", headers=operator)
    assert erased.status_code == 200

    mail = (await client.get(f"/emails/{accepted.json()['id']}", headers=operator)).json()
    assert mail["to"] is None
    assert mail["status"] == "sent"

    state = (await client.get("/recipients/taro@example.com", headers=operator)).json()
    assert state["address"] is None
    assert state["suppressed"]["reason"] == "complaint"
    # Free text that quoted the address no longer does.
    assert state["suppressed"]["detail"] == "feedback from <[erased]>"
    assert "taro" not in str(state).lower()
    assert [(e["action"], e["cause"]) for e in state["history"]] == [
        ("suppressed", "ses-feedback:0100018c-feedback"),
        ("erased", f"api_key:{OPERATOR}"),
    ]

    refused = await send(client, operator, "password-reset")
    assert refused.status_code == 409
    assert refused.json()["error"]["reason"] == "complaint"

    # Erasing again, or an address never seen, is not an error; the one never seen is kept
    # from mail from now on, by its hash alone.
    assert (
        await client.delete("/recipients/taro@example.com", headers=operator)
    ).status_code == 200
    jiro = await client.delete("/recipients/jiro@example.com", headers=operator)
    assert jiro.status_code == 200
    assert jiro.json()["erased"] is False
    state = (await client.get("/recipients/jiro@example.com", headers=operator)).json()
    assert state["address"] is None
    assert state["suppressed"]["reason"] == "erased"


async def test_queued_mail_to_an_erased_recipient_is_never_sent(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    queued = [
        await send(client, auth, kind) for kind in ("password-reset", "matching-notification")
    ]

    assert (await client.delete("/recipients/taro@example.com", headers=auth)).status_code == 200
    await drain(client)

    assert ses.sent() == []
    for answer in queued:
        mail = (await client.get(f"/emails/{answer.json()['id']}", headers=auth)).json()
        assert mail["status"] == "failed"
        assert mail["last_error"] == "recipient erased"
        assert mail["to"] is None


async def test_an_erased_address_with_no_suppression_of_its_own_gets_no_mail_again(
    client: httpx.AsyncClient, auth: dict[str, str], ses: MotoSes
) -> None:
    # Mailed, never bounced or complained: tegami held no suppression before the erasure.
    assert (await send(client, auth, "password-reset")).status_code == 202
    await drain(client)
    assert len(ses.sent()) == 1

    await client.delete("/recipients/taro@example.com", headers=auth)

    refused = await send(client, auth, "password-reset")
    assert refused.status_code == 409
    assert refused.json()["error"]["reason"] == "erased"
    await drain(client)
    assert len(ses.sent()) == 1
    state = (await client.get("/recipients/taro@example.com", headers=auth)).json()
    assert state["address"] is None
    assert [(e["action"], e["reason"]) for e in state["history"]] == [
        ("suppressed", "erased"),
        ("erased", None),
    ]
    # Coming back is a decision for an operator: lifting lets mail go again.
    lifted = await client.delete("/recipients/taro@example.com/suppression", headers=auth)
    assert lifted.status_code == 200
    assert (await send(client, auth, "password-reset")).status_code == 202


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/recipients/taro@example.com"),
        ("DELETE", "/recipients/taro@example.com"),
        ("PUT", "/recipients/taro@example.com/suppression"),
        ("DELETE", "/recipients/taro@example.com/suppression"),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer tgm_not-a-key"}])
async def test_recipient_api_requires_an_api_key(
    client: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    answer = await client.request(method, path, json={}, headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "address", ["not-an-address", "taro@", "@example.com", "a b@example.com", "taro@example.com%0A"]
)
async def test_nonsense_address_is_422(
    client: httpx.AsyncClient, auth: dict[str, str], address: str
) -> None:
    answer = await client.get(f"/recipients/{address}", headers=auth)
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "invalid_request"


async def test_only_manual_suppressions_can_be_added_by_hand(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    answer = await client.put(
        "/recipients/taro@example.com/suppression", json={"reason": "complaint"}, headers=auth
    )
    assert answer.status_code == 422
    assert (await client.get("/recipients/taro@example.com", headers=auth)).status_code == 404
