"""Fragments of one statement, each from its owner, composed with a check (app.db.compose): a
missing piece fails here and at import, never in production."""

from __future__ import annotations

import pytest

from app.db import CompositionError, Fragment, compose
from app.emails import outbox
from app.recipients import service as recipients
from app.webhooks import deliveries as webhooks

RECIPIENTS = Fragment(
    sql="\n    erased AS (SELECT CAST(:r_pattern AS text) AS pattern)", prefix="r_"
)
OUTBOX = Fragment(
    sql="\n    history AS (SELECT pattern, CAST(:m_cause AS text) FROM erased)",
    prefix="m_",
    needs=frozenset({"erased"}),
)


def test_fragments_that_fit_compose_in_order() -> None:
    statement = compose(RECIPIENTS, OUTBOX, select="SELECT 1")
    assert statement.names == ("r_pattern", "m_cause")
    assert statement.sql.startswith("WITH\n    erased AS")


@pytest.mark.parametrize(
    ("fragments", "complaint"),
    [
        # The outbox needs the recipients' CTE: alone, or before it, it has none.
        ((OUTBOX,), "'erased' is needed"),
        ((OUTBOX, RECIPIENTS), "'erased' is needed"),
        # Reading another owner's CTE without saying so.
        (
            (
                RECIPIENTS,
                Fragment(sql="\n    history AS (SELECT pattern FROM erased)", prefix="m_"),
            ),
            "reads the CTE 'erased'",
        ),
        # Another owner's parameter, used without declaring it (the outbox's old `:cause`).
        (
            (RECIPIENTS, Fragment(sql="\n    history AS (SELECT :r_cause)", prefix="m_")),
            ":r_cause is neither own",
        ),
        # Declared, but no fragment owns it.
        (
            (
                RECIPIENTS,
                Fragment(
                    sql="\n    history AS (SELECT :r_cause)",
                    prefix="m_",
                    needs_params=frozenset({"r_cause"}),
                ),
            ),
            ":r_cause is needed but no fragment owns it",
        ),
        # Two owners providing one name.
        ((RECIPIENTS, RECIPIENTS), "two fragments provide the CTE 'erased'"),
    ],
)
def test_a_missing_piece_fails_to_compose(fragments: tuple[Fragment, ...], complaint: str) -> None:
    with pytest.raises(CompositionError, match=complaint):
        compose(*fragments, select="SELECT 1")


def test_each_owner_uses_only_its_own_parameters() -> None:
    for fragment, prefix in (
        (recipients.DECISIONS, "r_"),
        (outbox.FEEDBACK, "m_"),
        (webhooks.email_events(), "w_"),
        (webhooks.SUPPRESSED_EVENTS, "w_"),
    ):
        assert fragment.params == fragment.own_params
        assert all(name.startswith(prefix) for name in fragment.params)
