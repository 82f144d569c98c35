"""What the worker asks of the reputation watch (app.reputation, a floor above, which the
worker must not import): hold this category? may the account send? ask SES again."""

from __future__ import annotations

from typing import Protocol

# A verdict changed in one replica: the others evaluate at once (payload: the process).
REPUTATION_CHANNEL = "tegami_reputation"


class Guard(Protocol):
    @property
    def account_paused(self) -> bool:
        """SES says the account cannot send: the worker waits instead of failing mail."""

    def holds(self, category: str) -> bool:
        """Optional mail of this category waits while the rates are over SES's review level."""

    async def poll_account(self) -> object:
        """Read SES's view of the account again (GetAccount)."""

    def nudge(self) -> None:
        """Evaluate the rates now (another replica's verdict changed)."""
