"""The unsubscribe link the worker puts in every mail: a token signed with the current secret
(the first of TEGAMI_UNSUBSCRIBE_SECRET), under the public base URL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from app.config import Settings
from app.unsubscribe.tokens import UnsubscribeClaim, make_token


@dataclass(frozen=True)
class UnsubscribeLinks:
    base_url: str
    secret: str

    @classmethod
    def of(cls, settings: Settings) -> UnsubscribeLinks:
        return cls(
            base_url=settings.public_base_url,
            secret=settings.unsubscribe_secret[0].get_secret_value(),
        )

    def __call__(self, *, recipient_id: int, category: str, now: datetime) -> str:
        claim = UnsubscribeClaim(
            recipient_id=recipient_id, category=category, issued_at=int(now.timestamp())
        )
        return f"{self.base_url}/unsubscribe/{make_token(claim, secret=self.secret)}"
