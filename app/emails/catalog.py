"""The four mails of the seed: subject, required link params, category and link lifetime."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class Category(StrEnum):
    # Account mail is sent because the user just asked for it: opt-out does not stop it.
    ACCOUNT = "account"
    # Optional mail: an unsubscribe stops it.
    MATCHING = "matching"

    @property
    def optional(self) -> bool:
        """An unsubscribe (opt-out) stops this category; suppression stops every one."""
        return self in OPTIONAL_CATEGORIES


OPTIONAL_CATEGORIES = frozenset({Category.MATCHING})


@dataclass(frozen=True)
class EmailKind:
    name: str
    subject: str
    category: Category
    params: tuple[str, ...]
    # The seed promises a one-hour link for account mail; an expired mail is never sent.
    lifetime: timedelta | None


EMAIL_KINDS: dict[str, EmailKind] = {
    kind.name: kind
    for kind in (
        EmailKind(
            name="verify-email",
            subject="【PRO WORKS】メールアドレスの確認",
            category=Category.ACCOUNT,
            params=("verification_url",),
            lifetime=timedelta(hours=1),
        ),
        EmailKind(
            name="password-reset",
            subject="【PRO WORKS】パスワードのリセット",
            category=Category.ACCOUNT,
            params=("reset_url",),
            lifetime=timedelta(hours=1),
        ),
        EmailKind(
            name="email-change",
            subject="【PRO WORKS】メールアドレス変更の確認",
            category=Category.ACCOUNT,
            params=("verification_url",),
            lifetime=timedelta(hours=1),
        ),
        EmailKind(
            name="matching-notification",
            subject="【PRO WORKS】新しいマッチング案件があります",
            category=Category.MATCHING,
            params=("job_url",),
            lifetime=None,
        ),
    )
}
