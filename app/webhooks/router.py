"""GET /webhooks/deliveries (the `webhooks` permission: admin keys), and the event list in the
OpenAPI document."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query

from app.api_keys import WebhooksKeyDep
from app.db import SessionDep
from app.errors import error_responses
from app.models import WebhookDelivery
from app.webhooks import deliveries
from app.webhooks.deliveries import DeliveryStatus
from app.webhooks.events import DESCRIPTIONS, EventType, model_for, webhook_id
from app.webhooks.schemas import WebhookDeliveryList, WebhookDeliveryRead

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


def _read(row: WebhookDelivery) -> WebhookDeliveryRead:
    pending = row.status == DeliveryStatus.PENDING
    return WebhookDeliveryRead(
        webhook_id=webhook_id(row.id),
        type=row.type,
        status=DeliveryStatus(row.status),
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if pending else None,
        last_status=row.last_status,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        data=row.data,
    )


@router.get(
    "/deliveries",
    response_model=WebhookDeliveryList,
    summary="The events posted (or to be posted) to TEGAMI_WEBHOOK_URL, newest first",
    description="`status=failed`: the events the app never acknowledged within the retry "
    "schedule; `tegami webhooks replay --since TIME` sends them again. Needs the `webhooks` "
    "permission (admin keys).",
    operation_id="listWebhookDeliveries",
    responses=error_responses(401, 403, 422, 503, _422="`status` or `limit` not valid."),
)
async def list_deliveries(
    session: SessionDep,
    caller: WebhooksKeyDep,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> WebhookDeliveryList:
    rows = await deliveries.list_deliveries(session, status=status, limit=limit)
    return WebhookDeliveryList(deliveries=[_read(row) for row in rows])


def register_webhooks(webhooks: APIRouter) -> None:
    """Each event as an OpenAPI 3.1 webhook: what tegami posts to the app."""
    for event_type in EventType:
        model = model_for(event_type)

        async def receive(event: Any) -> None:
            """Documentation only: the app serves this."""

        # Set as objects: this module's annotations are strings, and the model is local.
        receive.__annotations__ = {"event": Annotated[model, Body()], "return": None}

        webhooks.post(
            event_type.value,
            summary=event_type.value,
            description=DESCRIPTIONS[event_type]
            + " Signed as the Standard Webhooks specification says (headers `webhook-id`, "
            "`webhook-timestamp`, `webhook-signature`). Answer 2xx within 10 s; anything else "
            "is retried, with the same `webhook-id`, for more than a day.",
            # `email.sent` -> `emailSent`: lowerCamelCase like every operation.
            operation_id=_camel(event_type.value),
            status_code=204,
            responses={
                204: {"description": "Received (any 2xx will do)."},
                # The app's own refusals: any non-2xx is retried with the same webhook-id.
                "default": {"description": "Anything else: tegami retries."},
            },
        )(receive)


def _camel(name: str) -> str:
    first, *rest = re.split(r"[._]", name)
    return first + "".join(part.capitalize() for part in rest)
