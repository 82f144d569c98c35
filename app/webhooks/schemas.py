from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.webhooks.deliveries import DeliveryStatus


class WebhookDeliveryRead(BaseModel):
    webhook_id: str = Field(description="The `webhook-id` header: the same on every attempt.")
    type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = Field(description="While pending: the next attempt.")
    last_status: int | None = Field(description="The app's last HTTP status (null: no answer).")
    last_error: str | None = Field(description="What went wrong on the last attempt.")
    created_at: datetime
    delivered_at: datetime | None
    data: dict[str, Any]


class WebhookDeliveryList(BaseModel):
    deliveries: list[WebhookDeliveryRead]
