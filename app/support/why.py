"""Why a person did or did not get a mail, in words support staff can read to the customer.

Pure: ``decide`` takes the facts (the newest mail of the type asked about with its history,
the address's suppression, opt-outs and erasure) and returns one verdict with its Japanese
explanation and next step. Gathering the facts is app/support/service.py's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from app.emails.lifecycle import Event
from app.models import Category, MessageStatus
from app.recipients.addresses import normalize_address
from app.recipients.rules import Feedback


class VerdictKind(StrEnum):
    NEVER_SENT = "never_sent"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    HELD = "held"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    EXPIRED = "expired"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    OPTED_OUT = "opted_out"
    ERASED = "erased"


# The Japanese mobile carriers whose address domains filter mail by sender domain (迷惑メール
# フィルター / 受信リスト): a delivered mail may still be dropped unless proworks.jp is allowed.
CARRIERS: dict[str, str] = {
    "docomo.ne.jp": "ドコモ",
    "ezweb.ne.jp": "au",
    "biz.ezweb.ne.jp": "au",
    "au.com": "au",
    "biz.au.com": "au",
    "softbank.ne.jp": "ソフトバンク",
    "i.softbank.jp": "ソフトバンク",
    "ymobile.ne.jp": "ソフトバンク（Y!mobile）",
    "disney.ne.jp": "ソフトバンク",
}
ALLOWED_DOMAIN = "proworks.jp"


def carrier_of(address: str) -> str | None:
    """`taro.@docomo.ne.jp` -> "ドコモ"; the legacy `*.vodafone.ne.jp` are SoftBank's."""
    domain = normalize_address(address).rpartition("@")[2]
    if domain.endswith(".vodafone.ne.jp"):
        return "ソフトバンク"
    return CARRIERS.get(domain)


@dataclass(frozen=True)
class EventFact:
    kind: str
    detail: str | None
    feedback: str | None
    created_at: datetime


@dataclass(frozen=True)
class MailFacts:
    id: uuid.UUID
    type: str
    category: str
    status: str
    created_at: datetime
    send_at: datetime | None = None
    last_error: str | None = None
    events: tuple[EventFact, ...] = ()

    def last_feedback(self) -> EventFact | None:
        for event in reversed(self.events):
            if event.feedback is not None and event.feedback != Feedback.NOTED:
                return event
        return None

    def last_event(self, kind: Event) -> EventFact | None:
        for event in reversed(self.events):
            if event.kind == kind:
                return event
        return None


@dataclass(frozen=True)
class SuppressionFact:
    reason: str
    detail: str | None
    created_at: datetime


@dataclass(frozen=True)
class PersonFacts:
    address: str
    # The category of the type asked about (None: any type; then the newest mail's).
    category: str | None = None
    mail: MailFacts | None = None
    suppression: SuppressionFact | None = None
    opted_out: frozenset[str] = field(default_factory=frozenset)
    erased: bool = False


@dataclass(frozen=True)
class Verdict:
    verdict: VerdictKind
    email_id: uuid.UUID | None
    explanation: str
    next_step: str


_SUPPRESSION_WHY = {
    "hard_bounce": "以前このアドレスに送ったメールが「宛先が存在しない」として戻ってきた",
    "soft_bounce_limit": "このアドレスへのメールが3回続けて一時的なエラーで戻ってきた",
    "complaint": "受信者がこちらからのメールを迷惑メールとして報告した",
    "manual": "運用担当者が手作業で送信を止めた",
}


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _diagnostic(event: EventFact | None) -> str:
    if event is None or not event.detail:
        return ""
    return f"（受信側サーバーの応答: {event.detail}）"


def _carrier_step(address: str) -> str:
    carrier = carrier_of(address)
    if carrier is None:
        return ""
    return (
        f" {carrier}のアドレスです。{carrier}の迷惑メールフィルター（受信リスト設定）で"
        f"「{ALLOWED_DOMAIN}」からのメールを受信できるように設定してもらってください。"
    )


def decide(facts: PersonFacts) -> Verdict:
    """One verdict: what stops mail now comes first (erasure, suppression, opt-out), then what
    became of the newest mail."""
    mail = facts.mail
    email_id = mail.id if mail is not None else None
    category = facts.category or (mail.category if mail is not None else None)
    step_carrier = _carrier_step(facts.address)

    if facts.erased:
        return Verdict(
            VerdictKind.ERASED,
            email_id,
            "このアドレスの個人データは削除依頼により消去済みです。"
            "送信履歴の宛先も消去されています。",
            "アプリで改めてメールアドレスを登録してもらえば、新しいメールは届きます"
            "（以前の配信停止の理由が残っている場合を除く）。",
        )

    suppression = facts.suppression
    if suppression is not None:
        # The bounce or complaint that caused it says more than the suppression alone.
        if mail is not None and mail.status == MessageStatus.BOUNCED:
            return _bounced(mail, facts.address, suppressed=True)
        if mail is not None and mail.status == MessageStatus.COMPLAINED:
            return _complained(mail)
        why = _SUPPRESSION_WHY.get(suppression.reason, "配信停止の記録がある")
        detail = f"（{suppression.detail}）" if suppression.detail else ""
        return Verdict(
            VerdictKind.SUPPRESSED,
            email_id,
            f"{_when(suppression.created_at)}に、{why}ため、このアドレスにはどのメールも"
            f"送らない設定になっています{detail}。",
            "お客様に別のメールアドレスを登録してもらってください。アドレスが今は使えると"
            "確認できた場合は、管理者が配信停止を解除できます。"
            if suppression.reason != "complaint"
            else "迷惑メール報告による停止です。お客様ご本人が受信を希望していると確認できた"
            "場合に限り、管理者が配信停止を解除できます。",
        )

    if category is not None and category in facts.opted_out and Category(category).optional:
        return Verdict(
            VerdictKind.OPTED_OUT,
            email_id,
            "お客様ご自身がこの種類のお知らせ（マッチング通知）の配信を停止しています。"
            "アカウントに関するメール（パスワードリセットなど）は届きます。",
            "受信を再開したい場合は、アプリの通知設定か、以前のメールにある配信停止ページの"
            "「配信を再開する」から再開してもらってください。",
        )

    if mail is None:
        return Verdict(
            VerdictKind.NEVER_SENT,
            None,
            "このアドレスあてのこの種類のメールは、送信の依頼を受けていません。"
            "アプリがメールの送信を依頼していないか、別のアドレスで登録されています。",
            "登録されているメールアドレスに誤りがないか確認し、アプリからもう一度送信して"
            "もらってください（例: パスワードリセットをもう一度実行）。",
        )

    status = mail.status
    if status in (MessageStatus.QUEUED, MessageStatus.SENDING):
        soft = mail.last_feedback()
        if soft is not None and soft.feedback == Feedback.SOFT_BOUNCE:
            return Verdict(
                VerdictKind.BOUNCED,
                mail.id,
                "受信側のサーバーが一時的に受け取りを断りました"
                f"{_diagnostic(soft)}。メールボックスの容量不足やサーバーの混雑が考えられます。"
                "リンクの有効期限内は自動で再送します。",
                "しばらく待ってもらい、届かなければメールボックスの空き容量を確認してもらって"
                "ください。",
            )
        return Verdict(
            VerdictKind.QUEUED,
            mail.id,
            f"{_when(mail.created_at)}に受け付け、送信の順番を待っています。"
            "通常は数秒から数分で送信されます。",
            "数分待ってから受信箱を確認してもらってください。",
        )
    if status == MessageStatus.SCHEDULED:
        due = f"{_when(mail.send_at)}に" if mail.send_at is not None else "指定の時刻に"
        return Verdict(
            VerdictKind.SCHEDULED,
            mail.id,
            f"送信時刻が指定されているため、{due}送信する予定です（深夜の時間帯を避ける"
            "設定の場合もあります）。",
            "予定の時刻を過ぎてから受信箱を確認してもらってください。",
        )
    if status == MessageStatus.HELD:
        return Verdict(
            VerdictKind.HELD,
            mail.id,
            "現在、全体のバウンス率または迷惑メール報告率が高くなっているため、送信元の"
            "評判を守るためにお知らせメールの送信を一時的に止めています。率が下がると"
            "自動的に送信されます。アカウントに関するメールは止めていません。",
            "しばらく待ってもらうようお伝えください。急ぎの場合は管理者が送信を再開できます。",
        )
    if status == MessageStatus.SENT:
        return Verdict(
            VerdictKind.SENT,
            mail.id,
            f"{_when(mail.created_at)}に受け付け、Amazon SESに渡しました。"
            "受信側サーバーからの受け取り結果はまだ届いていません。",
            "数分待ってから、受信箱と迷惑メールフォルダを確認してもらってください。" + step_carrier,
        )
    if status == MessageStatus.DELIVERED:
        delivered = mail.last_event(Event.DELIVERY)
        at = _when(delivered.created_at) if delivered is not None else "送信後"
        return Verdict(
            VerdictKind.DELIVERED,
            mail.id,
            f"{at}に受信側のメールサーバーがメールを受け取りました。"
            "こちらからの送信は正常に完了しています。",
            "迷惑メールフォルダやフィルタ設定、別のフォルダへの自動振り分けを確認して"
            "もらってください。" + step_carrier,
        )
    if status == MessageStatus.BOUNCED:
        return _bounced(mail, facts.address, suppressed=False)
    if status == MessageStatus.COMPLAINED:
        return _complained(mail)
    if status == MessageStatus.EXPIRED:
        return Verdict(
            VerdictKind.EXPIRED,
            mail.id,
            "メールのリンクの有効期限（1時間）が切れるまでに送信できなかったため、"
            "送信を取りやめました。",
            "アプリからもう一度送信してもらってください（例: パスワードリセットをもう一度実行）。",
        )
    if status == MessageStatus.CANCELLED:
        return Verdict(
            VerdictKind.FAILED,
            mail.id,
            "アプリがこのメールの送信を取り消しました（送信前に取り消されたため、"
            "送られていません）。",
            "必要であれば、アプリからもう一度送信してもらってください。",
        )
    # failed
    blocked = mail.last_event(Event.BLOCKED)
    if blocked is not None:
        # Stopped by the check right before sending; what stopped it has since gone (or the
        # verdicts above would have said so).
        return Verdict(
            VerdictKind.FAILED,
            mail.id,
            f"送信の直前に配信停止の状態だったため、このメールは送りませんでした（{blocked.detail}）。"
            "その状態は現在は解除されています。",
            "アプリからもう一度送信してもらえば届きます。",
        )
    reason = f"（理由: {mail.last_error}）" if mail.last_error else ""
    return Verdict(
        VerdictKind.FAILED,
        mail.id,
        f"このメールは送信できませんでした{reason}。",
        "アプリからもう一度送信してもらってください。繰り返し失敗する場合は開発担当に"
        "メールIDを伝えてください。",
    )


def _bounced(mail: MailFacts, address: str, *, suppressed: bool) -> Verdict:
    bounce = mail.last_feedback()
    if bounce is not None and bounce.feedback == Feedback.SOFT_BOUNCE:
        return Verdict(
            VerdictKind.BOUNCED,
            mail.id,
            "受信側のサーバーが一時的な理由で受け取りを断り、再送もできませんでした"
            f"{_diagnostic(bounce)}。"
            + (
                "一時的なエラーが3回続いたため、このアドレスへの送信を止めています。"
                if suppressed
                else ""
            ),
            "メールボックスの容量や受信設定を確認してもらい、それでも届かなければ別の"
            "メールアドレスを登録してもらってください。" + _carrier_step(address),
        )
    return Verdict(
        VerdictKind.BOUNCED,
        mail.id,
        "受信側のサーバーが「このアドレスは存在しない」としてメールを返しました"
        f"{_diagnostic(bounce)}。アドレスの入力間違いや、解約済みのアドレスが考えられます。"
        "このアドレスには今後どのメールも送りません。",
        "お客様に正しいメールアドレスを確認し、別のアドレスを登録してもらってください。",
    )


def _complained(mail: MailFacts) -> Verdict:
    return Verdict(
        VerdictKind.COMPLAINED,
        mail.id,
        "受信者がこのメールを迷惑メールとして報告したため、このアドレスにはどのメールも"
        "送らない設定になっています。",
        "お客様ご本人に、迷惑メール報告をしたかどうか確認してください。受信を希望する場合は"
        "管理者が配信停止を解除できます。",
    )
