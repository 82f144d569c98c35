"""Operator alerts: a JSON log line with a stable ``event`` name (for a CloudWatch metric
filter) goes out with every alert; this posts the same news to ``TEGAMI_ALERT_WEBHOOK_URL``
(a Slack-style ``{"text": ...}`` body)."""

from __future__ import annotations

import logging

import httpx

log = logging.getLogger(__name__)


async def post_alert(http: httpx.AsyncClient | None, url: str | None, message: str) -> None:
    """Best effort: a failed post is logged, never raised (the alert's log line stands)."""
    if not url:
        return
    try:
        if http is None:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.post(url, json={"text": message})
        else:
            response = await http.post(url, json={"text": message})
        response.raise_for_status()
    except Exception as exc:
        log.warning(
            "alert webhook failed", extra={"event": "alert_webhook_failed", "error": repr(exc)}
        )
