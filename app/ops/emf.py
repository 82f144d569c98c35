"""tegami's figures as CloudWatch Embedded Metric Format (EMF) lines on stdout.

On ECS (the ``awslogs`` driver) and App Runner, CloudWatch Logs turns each line into metrics:
no agent, no ``PutMetricData`` permission. Every process flushes once a minute what its
Prometheus counters gained since the last flush (a sum over the processes is then the whole
service's); processes that run the worker also report the outbox and the reputation figures,
read from the database (the shared truth, so any one worker's reading is the service's).

The names below are the contract with the stack's dashboard, alarms and worker scaling
(``deploy/cloudformation/``; a test checks that every metric they name is one emitted here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from prometheus_client import Counter

from app.ops.metrics import (
    EMAILS_ACCEPTED,
    EMAILS_FAILED,
    EMAILS_REFUSED,
    EMAILS_SENT,
    SEND_LATENCY,
    SEND_RETRIES,
    SNS_MESSAGES,
    WEBHOOK_DELIVERIES,
)

log = logging.getLogger(__name__)

FLUSH_SECONDS = 60.0
# EMF takes a metric's values as an array of at most 100 numbers, each one observation.
MAX_VALUES = 100
# A minute's latency goes out as at most this many values: past it, each bucket's share is
# kept (so are the percentiles), not the count, which EmailsSent has.
MAX_SAMPLES = 10 * MAX_VALUES


@dataclass(frozen=True)
class CounterFigure:
    """A Prometheus counter as an EMF count: its total, and (``by``) one series per label value
    under the dimension ``dimension``."""

    name: str
    counter: Counter
    by: str | None = None
    dimension: str | None = None


COUNTERS = (
    CounterFigure("EmailsAccepted", EMAILS_ACCEPTED),
    CounterFigure("EmailsRefused", EMAILS_REFUSED, by="reason", dimension="Reason"),
    CounterFigure("EmailsSent", EMAILS_SENT),
    CounterFigure("EmailsFailed", EMAILS_FAILED, by="reason", dimension="Reason"),
    CounterFigure("SendRetries", SEND_RETRIES, by="outcome", dimension="Outcome"),
    CounterFigure("SnsMessages", SNS_MESSAGES, by="outcome", dimension="Outcome"),
    CounterFigure("WebhookDeliveries", WEBHOOK_DELIVERIES, by="outcome", dimension="Outcome"),
)
# From accepted to handed to SES, as a distribution (CloudWatch computes percentiles from it).
SEND_LATENCY_FIGURE = "SendLatency"
# Read by processes that run the worker.
GAUGES = (
    "OutboxDepth",
    "OutboxOldestAgeSeconds",
    "OutboxDueAgeSeconds",
    "BounceRate",
    "ComplaintRate",
    "OptionalMailHeld",
)

# Every metric name, with the dimension sets it is emitted under (() is the total).
EMITTED: dict[str, frozenset[tuple[str, ...]]] = {
    **{
        figure.name: frozenset({(), (figure.dimension,)} if figure.dimension else {()})
        for figure in COUNTERS
    },
    SEND_LATENCY_FIGURE: frozenset({()}),
    **{name: frozenset({()}) for name in GAUGES},
}

Gauges = Callable[[], Awaitable[dict[str, float]]]


class EmfEmitter:
    """Writes what the counters gained since the last flush, and the gauges, as EMF lines."""

    def __init__(
        self, *, namespace: str, gauges: Gauges | None = None, out: TextIO | None = None
    ) -> None:
        self.namespace = namespace
        self.gauges = gauges
        self.out = out
        self._seen: dict[tuple[str, str], float] = {}
        self._latency_seen: dict[float, float] = {}
        # Counts from before this emitter (an earlier app in the same process) are not news.
        self._deltas()
        self._latency()

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        # A fixed rate, not a pause after each flush: drifting, a minute would now and then get
        # no figure, which the late-mail alarm counts as no worker.
        due = loop.time()
        while not stopping.is_set():
            due += FLUSH_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=max(0.0, due - loop.time()))
            await self.flush()  # the last flush on the way out keeps the final sends

    async def flush(self) -> None:
        lines = list(self._counter_documents())
        if self.gauges is not None:
            try:
                figures = await self.gauges()
            except Exception as exc:  # the database may be away; the counters still go out
                log.warning(
                    "EMF gauges unavailable",
                    extra={"event": "emf_gauges_failed", "error": repr(exc)},
                )
            else:
                lines.append(self._document({name: figures[name] for name in GAUGES}, {}))
        out = self.out or sys.stdout
        # Straight to stdout, not through logging: CloudWatch reads EMF from the raw line.
        out.write("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines))
        out.flush()

    def _counter_documents(self) -> Iterable[dict[str, Any]]:
        deltas = self._deltas()
        # Totals every minute, zero included, so a graph or an alarm sees "none", not "missing".
        yield self._document(
            {
                figure.name: sum(
                    value for (name, _), value in deltas.items() if name == figure.name
                )
                for figure in COUNTERS
            },
            {},
        )
        for figure in COUNTERS:
            if figure.dimension is None:
                continue
            for (name, label), value in sorted(deltas.items()):
                if name == figure.name and value:
                    yield self._document({name: value}, {figure.dimension: label})
        samples = _samples(self._latency())
        for start in range(0, len(samples), MAX_VALUES):
            yield self._document({SEND_LATENCY_FIGURE: samples[start : start + MAX_VALUES]}, {})

    def _deltas(self) -> dict[tuple[str, str], float]:
        now: dict[tuple[str, str], float] = {}
        for figure in COUNTERS:
            for metric in figure.counter.collect():
                for sample in metric.samples:
                    if not sample.name.endswith("_total"):
                        continue
                    label = sample.labels.get(figure.by, "") if figure.by else ""
                    key = (figure.name, label)
                    now[key] = now.get(key, 0.0) + sample.value
        deltas = {key: value - self._seen.get(key, 0.0) for key, value in now.items()}
        self._seen = now
        return deltas

    def _latency(self) -> dict[float, float]:
        """The histogram's new observations by bucket, each counted at its upper bound (the
        last, open bucket at the largest finite bound)."""
        cumulative: list[tuple[float, float]] = []
        for metric in SEND_LATENCY.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    cumulative.append((float(sample.labels["le"]), sample.value))
        cumulative.sort()
        finite = [bound for bound, _ in cumulative if bound != float("inf")]
        counts: dict[float, float] = {}
        below = 0.0
        for bound, total in cumulative:
            in_bucket = total - below
            below = total
            key = bound if bound != float("inf") else finite[-1]
            counts[key] = counts.get(key, 0.0) + in_bucket
        new = {bound: count - self._latency_seen.get(bound, 0.0) for bound, count in counts.items()}
        self._latency_seen = counts
        return {bound: count for bound, count in new.items() if count > 0}

    def _document(self, figures: dict[str, Any], dimensions: dict[str, str]) -> dict[str, Any]:
        return {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": self.namespace,
                        "Dimensions": [sorted(dimensions)],
                        "Metrics": [{"Name": name, "Unit": _unit(name)} for name in figures],
                    }
                ],
            },
            **dimensions,
            **figures,
        }


def _samples(counts: dict[float, float]) -> list[float]:
    """Each bucket's bound, repeated as often as it was observed (scaled down past
    MAX_SAMPLES, a bucket observed at all keeping one)."""
    total = sum(counts.values())
    scale = min(1.0, MAX_SAMPLES / total) if total else 1.0
    samples: list[float] = []
    for bound, count in sorted(counts.items()):
        samples.extend([bound] * max(1, round(count * scale)))
    return samples


def _unit(name: str) -> str:
    if name.endswith("Seconds") or name == SEND_LATENCY_FIGURE:
        return "Seconds"
    if name in GAUGES:
        return "None"
    return "Count"
