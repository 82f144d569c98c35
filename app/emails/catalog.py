"""The four mails of the seed: subject, required link params, category and link lifetime."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from app.models import Category, MailType


@dataclass(frozen=True)
class EmailKind:
    name: MailType
    subject: str
    category: Category
    params: tuple[str, ...]
    # The seed promises a one-hour link for account mail; an expired mail is never sent.
    lifetime: timedelta | None


EMAIL_KINDS: dict[str, EmailKind] = {  # keyed by MailType (a str)
    kind.name: kind
    for kind in (
        EmailKind(
            name=MailType.VERIFY_EMAIL,
            subject="【PRO WORKS】メールアドレスの確認",
            category=Category.ACCOUNT,
            params=("verification_url",),
            lifetime=timedelta(hours=1),
        ),
        EmailKind(
            name=MailType.PASSWORD_RESET,
            subject="【PRO WORKS】パスワードのリセット",
            category=Category.ACCOUNT,
            params=("reset_url",),
            lifetime=timedelta(hours=1),
        ),
        EmailKind(
            name=MailType.EMAIL_CHANGE,
            subject="【PRO WORKS】メールアドレス変更の確認",
            category=Category.ACCOUNT,
            params=("verification_url",),
            lifetime=timedelta(hours=1),
        ),
        EmailKind(
            name=MailType.MATCHING_NOTIFICATION,
            subject="【PRO WORKS】新しいマッチング案件があります",
            category=Category.MATCHING,
            params=("job_url",),
            lifetime=None,
        ),
    )
}
