"""SNS at volume: a few hundred signed SES events for many addresses, delivered the way SNS
really does (twice, out of order, republished by SES under a new MessageId), mixed with
forged and replayed messages, many at once. The state must end exactly as the rules say,
computed here by a model of DESIGN.md's table applied in arrival order; every forgery is
a 403 and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.sns.signature import make_signing_identity, sign_message
from tests.conftest import AppFactory
from tests.ops.test_metrics import sample
from tests.sns_messages import REGION, TOPIC, Sns, iso, ses_event

SEED = 20261123
ADDRESSES = 30
FORGED_ONLY = 10  # addresses that only forgeries name: tegami must know nothing of them

EVENTS = {
    "hard": ("eventpub-bounce-permanent-general.json", {}),
    "soft": ("real-notif-bounce-transient-general-ooto-simulator-2018.json", {}),
    "delivery": ("eventpub-delivery.json", {}),
    "complaint": ("eventpub-complaint-abuse.json", {}),
    "not_spam": ("eventpub-complaint-abuse.json", {"complaintFeedbackType": "not-spam"}),
    "open": ("eventpub-open.json", {}),
}
WEIGHTS = {"soft": 35, "delivery": 25, "hard": 5, "complaint": 5, "not_spam": 8, "open": 22}
FORGERIES = ("tampered", "other_key", "foreign_topic", "foreign_cert", "too_old", "version")


@dataclass
class Model:
    """One address as DESIGN.md's rules leave it, events applied in arrival order."""

    soft_bounce_count: int = 0
    suppressed: str | None = None
    soft_bounces_counted: int = 0
    known: bool = False
    feedback_seen: set[str] = field(default_factory=set)

    def apply(self, kind: str, feedback_id: str | None) -> str:
        """Apply one SNS message seen for the first time; the outcome tegami reports."""
        if kind == "soft":
            assert feedback_id is not None
            if feedback_id in self.feedback_seen:  # SES published it twice
                return "duplicate"
            self.feedback_seen.add(feedback_id)
            self.known = True
            self.soft_bounce_count += 1
            self.soft_bounces_counted += 1
            if self.soft_bounce_count >= 3:
                self.suppressed = self.suppressed or "soft_bounce_limit"
        elif kind == "hard":
            self.known = True
            self.suppressed = self.suppressed or "hard_bounce"
        elif kind == "complaint":
            self.known = True
            self.suppressed = self.suppressed or "complaint"
        elif kind == "delivery":
            self.soft_bounce_count = 0  # never lifts a suppression
        return "applied"


@dataclass
class Post:
    message: dict[str, Any]
    kind: str  # an event kind, or a forgery
    feedback_id: str | None = None
    twice_at_once: bool = False  # SNS delivering one message twice, concurrently


def _plan(rng: random.Random, sns: Sns, other_key: bytes) -> dict[str, list[Post]]:
    """Per address, the posts in arrival order."""
    plans: dict[str, list[Post]] = {}
    now = datetime.now(UTC)
    for number in range(ADDRESSES):
        address = f"volume{number}@example.com"
        kinds = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=rng.randint(4, 12))
        posts = []
        for position, kind in enumerate(kinds):
            name, changes = EVENTS[kind]
            event = ses_event(name, to=address, **changes)
            feedback_id = event.get("bounce", {}).get("feedbackId")
            # SNS stamps them in the order SES emitted them; they arrive in another order.
            stamp = iso(now - timedelta(seconds=60 - position))
            posts.append(Post(sns.notification(event, Timestamp=stamp), kind, feedback_id))
            if kind == "soft" and rng.random() < 0.3:  # SES publishes the event again
                posts.append(Post(sns.notification(event), kind, feedback_id))
        rng.shuffle(posts)
        for post in list(posts):
            if rng.random() < 0.25:  # SNS delivers again, later
                posts.insert(
                    rng.randint(0, len(posts)), Post(post.message, post.kind, post.feedback_id)
                )
            elif rng.random() < 0.15:  # or twice at the same moment
                post.twice_at_once = True
        for _ in range(rng.randint(0, 3)):
            posts.insert(rng.randint(0, len(posts)), _forgery(rng, sns, other_key, address))
        plans[address] = posts
    for number in range(FORGED_ONLY):
        address = f"forged{number}@example.com"
        plans[address] = [_forgery(rng, sns, other_key, address) for _ in range(3)]
    return plans


def _forgery(rng: random.Random, sns: Sns, other_key: bytes, address: str) -> Post:
    """A message that would change the address's state, if tegami believed it."""
    kind = rng.choice(FORGERIES)
    event = ses_event(EVENTS[rng.choice(["hard", "complaint", "delivery"])][0], to=address)
    if kind == "tampered":  # signed for someone else, then edited
        message = sns.notification(ses_event(EVENTS["open"][0], to=address))
        message["Message"] = json.dumps(event)
    elif kind == "other_key":
        message = sign_message({**sns.notification(event)}, other_key, signature_version="2")
    elif kind == "foreign_topic":  # well signed, by some other AWS account
        message = sns.notification(event, TopicArn=TOPIC.replace("123456789012", "999999999999"))
    elif kind == "foreign_cert":
        message = sns.notification(
            event, SigningCertURL="https://sns.evil.example/SimpleNotificationService-0.pem"
        )
    elif kind == "too_old":  # a genuine message, replayed long after
        message = sns.notification(event, Timestamp=iso(datetime.now(UTC) - timedelta(hours=2)))
    else:  # signed as version 2, presented as version 1
        message = {**sns.notification(event), "SignatureVersion": "1"}
    return Post(message, kind)


@pytest.fixture
async def sns(start_app: AppFactory, sns_identity: tuple[bytes, bytes], sns_cert_dir: Path) -> Sns:
    client = await start_app(sns_cert_dir=sns_cert_dir, sns_topic_arns=[TOPIC])
    return Sns(client, sns_identity[0])


async def test_hundreds_of_duplicated_reordered_and_forged_messages_end_as_the_rules_say(
    sns: Sns, auth: dict[str, str]
) -> None:
    rng = random.Random(SEED)
    other_key, _ = make_signing_identity(common_name=f"sns.{REGION}.amazonaws.com")
    plans = _plan(rng, sns, other_key)
    before = (await sns.client.get("/metrics")).text

    models = {address: Model() for address in plans}
    seen: dict[str, set[str]] = {address: set() for address in plans}
    mismatches: list[str] = []
    posted: Counter[str] = Counter()

    async def deliver(address: str) -> None:
        # One address's messages one after another (their order is what the model follows);
        # all addresses at once.
        for post in plans[address]:
            copies = 2 if post.twice_at_once else 1
            answers = await asyncio.gather(*(sns.post(post.message) for _ in range(copies)))
            posted["forged" if post.kind in FORGERIES else "genuine"] += copies
            got = sorted(
                a.json().get("outcome") if a.status_code == 200 else str(a.status_code)
                for a in answers
            )
            if post.kind in FORGERIES:
                expected = ["403"] * copies
            elif post.message["MessageId"] in seen[address]:
                expected = ["duplicate"] * copies
            else:
                seen[address].add(post.message["MessageId"])
                first = models[address].apply(post.kind, post.feedback_id)
                expected = sorted([first] + ["duplicate"] * (copies - 1))
            if got != expected:
                mismatches.append(f"{address} {post.kind}: {got} != {expected}")

    await asyncio.gather(*(deliver(address) for address in plans))
    assert not mismatches, "\n".join(mismatches)
    assert posted["genuine"] + posted["forged"] >= 300, posted

    for address, model in models.items():
        answer = await sns.client.get(f"/recipients/{address}", headers=auth)
        if not model.known:
            assert answer.status_code == 404, (address, answer.text)
            continue
        assert answer.status_code == 200, (address, answer.text)
        state = answer.json()
        assert (state["suppressed"] or {}).get("reason") == model.suppressed, address
        assert state["soft_bounce_count"] == model.soft_bounce_count, address
        counted = [e for e in state["history"] if e["action"] == "soft_bounce_counted"]
        assert len(counted) == model.soft_bounces_counted, address
        suppressions = [e for e in state["history"] if e["action"] == "suppressed"]
        assert len(suppressions) == (1 if model.suppressed else 0), address

    after = (await sns.client.get("/metrics")).text
    refused = sample(after, "tegami_sns_messages_total", outcome="refused") - sample(
        before, "tegami_sns_messages_total", outcome="refused"
    )
    assert refused == posted["forged"]
    print(
        f"\nSNS at volume: {posted['genuine']} genuine and {posted['forged']} forged posts "
        f"for {len(plans)} addresses; "
        f"{sum(1 for m in models.values() if m.suppressed)} suppressed as the rules say"
    )
