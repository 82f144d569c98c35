"""Request body cap: anything over 64 KiB (a batch send: 2 MiB, room for 500 mails) is refused
with 413 before it is read into memory."""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ErrorCode, error_body

MAX_BODY_BYTES = 64 * 1024
MAX_BATCH_BODY_BYTES = 2 * 1024 * 1024
TOO_LARGE = "the body is over 64 KiB"
BATCH_TOO_LARGE = "the body is over 2 MiB"


def _is_batch(path: str) -> bool:
    return path.startswith("/emails/") and path.endswith("/batch")


class _TooLarge(HTTPException):
    # An HTTPException, so FastAPI's body reader passes it on instead of calling it a 400.
    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BodySizeLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        batch = _is_batch(scope["path"])
        limit = max(self.max_bytes, MAX_BATCH_BODY_BYTES) if batch else self.max_bytes
        message_text = BATCH_TOO_LARGE if batch else TOO_LARGE
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False
                if too_large:
                    await self._refuse(send, message_text)
                    return

        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(message_text)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, message_text)

    @staticmethod
    async def _refuse(send: Send, message: str) -> None:
        body = json.dumps(error_body(ErrorCode.PAYLOAD_TOO_LARGE, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})
