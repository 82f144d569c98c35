"""GET /recipients/{email}/why: scripted histories, each built through the real API and real
signed SNS messages (a few through the owners' own functions), each with the verdict support
must read. The table is the spec of app/support/why.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from app.models import ApiKeyScope
from tests.support.conftest import Desk, in_days

Script = Callable[[Desk, str], Awaitable[str | None]]


@dataclass(frozen=True)
class Case:
    name: str
    address: str
    script: Script
    verdict: str
    type: str | None = None
    # Words the Japanese explanation or next step must hold.
    says: tuple[str, ...] = ()
    # The mail the verdict names: the id the script returned (None: null).
    names_mail: bool = True
    # Ask as this spelling of the address.
    asked_as: str | None = None


async def nothing(desk: Desk, to: str) -> str | None:
    return None


async def queued(desk: Desk, to: str) -> str | None:
    return await desk.send(to)


async def scheduled(desk: Desk, to: str) -> str | None:
    return await desk.send(to, "matching-notification", send_at=in_days(2))


async def held(desk: Desk, to: str) -> str | None:
    email_id = await desk.send(to, "matching-notification")
    await desk.hold_optional()
    return email_id


async def sent(desk: Desk, to: str) -> str | None:
    return (await desk.sent(to))[0]


async def delivered(desk: Desk, to: str) -> str | None:
    return await desk.delivered(to)


async def delayed(desk: Desk, to: str) -> str | None:
    email_id, ses_id = await desk.sent(to)
    await desk.ses("eventpub-deliverydelay.json", to, ses_id)
    return email_id


async def hard_bounce(desk: Desk, to: str) -> str | None:
    email_id, ses_id = await desk.sent(to)
    await desk.ses("eventpub-bounce-permanent-general.json", to, ses_id)
    return email_id


async def hard_bounce_then_refused(desk: Desk, to: str) -> str | None:
    email_id = await hard_bounce(desk, to)
    await desk.send(to, expect=409)  # the app tried again: refused, nothing stored
    return email_id


async def soft_bounce(desk: Desk, to: str) -> str | None:
    email_id, ses_id = await desk.sent(to)
    await desk.ses("real-notif-bounce-transient-general-ooto-simulator-2018.json", to, ses_id)
    return email_id


async def complaint(desk: Desk, to: str) -> str | None:
    email_id, ses_id = await desk.sent(to, "matching-notification")
    await desk.ses("eventpub-complaint-abuse.json", to, ses_id)
    return email_id


async def not_spam(desk: Desk, to: str) -> str | None:
    email_id, ses_id = await desk.sent(to, "matching-notification")
    await desk.ses("eventpub-delivery.json", to, ses_id)
    await desk.ses(
        "notif-complaint-with-feedback-abuse.json", to, ses_id, complaintFeedbackType="not-spam"
    )
    return email_id


async def rejected(desk: Desk, to: str) -> str | None:
    email_id, ses_id = await desk.sent(to)
    await desk.ses("eventpub-reject.json", to, ses_id)
    return email_id


async def suppressed_by_hand(desk: Desk, to: str) -> str | None:
    await desk.suppress(to)
    return None


async def delivered_then_suppressed(desk: Desk, to: str) -> str | None:
    email_id = await desk.delivered(to)
    await desk.suppress(to)
    return email_id


async def suppressed_while_queued(desk: Desk, to: str) -> str | None:
    email_id = await desk.send(to)
    await desk.suppress(to)
    await desk.drain()  # stopped by the check right before SendEmail
    return email_id


async def blocked_then_lifted(desk: Desk, to: str) -> str | None:
    email_id = await suppressed_while_queued(desk, to)
    answer = await desk.client.delete(f"/recipients/{desk.path(to)}/suppression", headers=desk.auth)
    assert answer.status_code == 200, answer.text
    return email_id


async def opted_out(desk: Desk, to: str) -> str | None:
    await desk.opt_out(to)
    return None


async def opted_out_after_a_notification(desk: Desk, to: str) -> str | None:
    email_id = await desk.delivered(to, "matching-notification")
    await desk.opt_out(to)
    return email_id


async def opted_out_while_queued(desk: Desk, to: str) -> str | None:
    email_id = await desk.send(to, "matching-notification")
    await desk.opt_out(to)
    await desk.drain()
    return email_id


async def opted_out_but_reset_delivered(desk: Desk, to: str) -> str | None:
    await desk.opt_out(to)
    return await desk.delivered(to, "password-reset")


async def erased_after_sending(desk: Desk, to: str) -> str | None:
    email_id = await desk.delivered(to)
    await desk.erase(to)
    return email_id


async def erased_after_a_bounce(desk: Desk, to: str) -> str | None:
    # The suppression survives the erasure (as a hash); the erasure is what support must say.
    email_id = await hard_bounce(desk, to)
    await desk.erase(to)
    return email_id


async def expired(desk: Desk, to: str) -> str | None:
    email_id = await desk.send(to)
    await desk.age(email_id, minutes=61)  # the worker was away for over an hour
    await desk.drain()
    return email_id


async def cancelled(desk: Desk, to: str) -> str | None:
    email_id = await desk.send(to, "matching-notification", send_at=in_days(1))
    await desk.cancel(email_id)
    return email_id


async def delivered_then_queued(desk: Desk, to: str) -> str | None:
    await desk.delivered(to)
    return await desk.send(to)


async def reset_delivered_then_notification_queued(desk: Desk, to: str) -> str | None:
    email_id = await desk.delivered(to, "password-reset")
    await desk.send(to, "matching-notification")
    return email_id


async def other_type_only(desk: Desk, to: str) -> str | None:
    await desk.delivered(to, "matching-notification")
    return None


async def bounced_then_new_address(desk: Desk, to: str) -> str | None:
    await hard_bounce(desk, "old-" + to)
    return await desk.delivered(to)


async def sent_by_app_key_asked_by_test_key(desk: Desk, to: str) -> str | None:
    await desk.delivered(to)
    return None


CARRIER = ("proworks.jp", "迷惑メールフィルター")

CASES = [
    Case("unknown address", "nobody@example.com", nothing, "never_sent", names_mail=False),
    Case("unknown address, a type", "nobody@example.com", nothing, "never_sent",
         type="password-reset", names_mail=False),
    Case("only another type was sent", "other@example.com", other_type_only, "never_sent",
         type="password-reset", names_mail=False),
    Case("accepted, not yet sent", "q@example.com", queued, "queued", says=("順番",)),
    Case("accepted, asked by type", "q@example.com", queued, "queued", type="password-reset"),
    Case("send_at two days ahead", "s@example.com", scheduled, "scheduled",
         type="matching-notification", says=("予定",)),
    Case("held by the reputation guard", "h@example.com", held, "held",
         says=("評判", "自動的に送信")),
    Case("handed to SES", "sent@example.com", sent, "sent", says=("迷惑メールフォルダ",)),
    Case("handed to SES, a delay reported", "d@example.com", delayed, "sent"),
    Case("delivered", "ok@example.com", delivered, "delivered", says=("迷惑メールフォルダ",)),
    Case("delivered to docomo", "taro@docomo.ne.jp", delivered, "delivered",
         says=("ドコモ", *CARRIER)),
    Case("delivered to au (ezweb)", "taro@ezweb.ne.jp", delivered, "delivered",
         says=("au", *CARRIER)),
    Case("delivered to au (au.com)", "taro@au.com", delivered, "delivered", says=CARRIER),
    Case("delivered to SoftBank", "taro@softbank.ne.jp", delivered, "delivered",
         says=("ソフトバンク", *CARRIER)),
    Case("delivered to SoftBank (i.softbank.jp)", "taro@i.softbank.jp", delivered,
         "delivered", says=CARRIER),
    Case("legacy docomo address, asked quoted", "taro.@docomo.ne.jp", delivered, "delivered",
         says=CARRIER, asked_as='"taro."@docomo.ne.jp'),
    Case("asked in capitals", "Hanako@Example.com", delivered, "delivered",
         asked_as="HANAKO@EXAMPLE.COM"),
    Case("hard bounce", "gone@example.com", hard_bounce, "bounced",
         says=("存在しない", "別のアドレス")),
    Case("hard bounce, the app tried again", "gone@example.com", hard_bounce_then_refused,
         "bounced", says=("存在しない",)),
    Case("soft bounce, to be sent again", "full@example.com", soft_bounce, "bounced",
         says=("一時的", "再送")),
    Case("complaint", "angry@example.com", complaint, "complained", says=("迷惑メール",)),
    Case("complaint taken back (not-spam)", "fine@example.com", not_spam, "delivered"),
    Case("SES rejected it", "virus@example.com", rejected, "failed"),
    Case("suppressed by hand, never mailed", "stop@example.com", suppressed_by_hand,
         "suppressed", names_mail=False, says=("手作業",)),
    Case("suppressed by hand after a delivery", "stop@example.com",
         delivered_then_suppressed, "suppressed"),
    Case("suppressed while the mail waited", "stop@example.com", suppressed_while_queued,
         "suppressed"),
    Case("stopped at send, suppression since lifted", "back@example.com", blocked_then_lifted,
         "failed", says=("もう一度送信",)),
    Case("opted out, asked about notifications", "quiet@example.com", opted_out, "opted_out",
         type="matching-notification", names_mail=False, says=("配信を再開",)),
    Case("opted out after a notification", "quiet@example.com",
         opted_out_after_a_notification, "opted_out", type="matching-notification"),
    Case("opted out while a notification waited", "quiet@example.com",
         opted_out_while_queued, "opted_out"),
    Case("opted out, but account mail flows", "quiet@example.com",
         opted_out_but_reset_delivered, "delivered", type="password-reset"),
    Case("erased after a delivery", "bye@example.com", erased_after_sending, "erased",
         says=("消去",)),
    Case("erased after a hard bounce", "bye@example.com", erased_after_a_bounce, "erased"),
    Case("link expired before it could go", "late@example.com", expired, "expired",
         says=("有効期限",)),
    Case("cancelled by the app", "c@example.com", cancelled, "failed", says=("取り消し",)),
    Case("newest of two mails", "two@example.com", delivered_then_queued, "queued"),
    Case("the type asked, not the newest", "two@example.com",
         reset_delivered_then_notification_queued, "delivered", type="password-reset"),
    Case("a new address after the old one bounced", "new@example.com",
         bounced_then_new_address, "delivered"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_verdict(desk: Desk, case: Case) -> None:
    email_id = await case.script(desk, case.address)

    answer = await desk.why(case.asked_as or case.address, case.type)

    assert answer["verdict"] == case.verdict, answer
    assert answer["email_id"] == (email_id if case.names_mail else None), answer
    said = answer["explanation"] + answer["next_step"]
    for words in case.says:
        assert words in said, (words, answer)


def test_the_table_covers_every_verdict() -> None:
    from app.support.why import VerdictKind

    assert len(CASES) >= 30
    assert {c.verdict for c in CASES} == {v.value for v in VerdictKind}


async def test_a_test_key_is_refused_a_persons_verdict(desk: Desk) -> None:
    # A test key is a sandbox: it reads the mails it sent, never a person's state.
    await desk.delivered("mine@example.com")
    test_key = await desk.key(ApiKeyScope.TEST)

    answer = await desk.client.get("/recipients/mine@example.com/why", headers=test_key)

    assert answer.status_code == 403
    assert answer.json()["error"]["permission"] == "read_recipients"


async def test_why_needs_a_key_and_an_address(desk: Desk) -> None:
    unauthenticated = await desk.client.get("/recipients/a@example.com/why")
    assert unauthenticated.status_code == 401
    not_an_address = await desk.client.get("/recipients/nobody/why", headers=desk.auth)
    assert not_an_address.status_code == 422


async def test_why_answers_get_alone(desk: Desk) -> None:
    # Not taken for an erasure of the address "a@example.com/why".
    answer = await desk.client.delete("/recipients/a@example.com/why", headers=desk.auth)
    assert answer.status_code == 405 and answer.headers["allow"] == "GET"
