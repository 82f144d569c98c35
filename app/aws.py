"""AWS as tegami talks to it: every client is built here, and what AWS answered when it
refused a call is read here.

Clients take credentials, region and endpoints from AWS's own variables (``AWS_REGION``,
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_SESV2`` / ``AWS_ENDPOINT_URL_SNS``, honoured by
botocore), so any SES-compatible endpoint can stand in.
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, Literal, overload

import aioboto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from types_aiobotocore_sesv2 import SESV2Client
    from types_aiobotocore_sns import SNSClient

DEFAULT_REGION = "ap-northeast-1"
# botocore's own pool size: enough for the checks and commands, which call one at a time.
DEFAULT_POOL_SIZE = 10
USER_AGENT = f"tegami/{version('tegami')} botocore/{botocore.__version__}"


def region_from_environment() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def client_config(*, pool_size: int = DEFAULT_POOL_SIZE) -> Config:
    return Config(
        # The worker owns retries (backoff, jitter, deadlines); botocore must not add its own.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=15,
        max_pool_connections=pool_size,
        # Measured per SendEmail (bench/NOTES.md): botocore rebuilds its detailed User-Agent
        # twice per call (0.25 ms of CPU); a fixed one is built once. The parameters are
        # built by SesSender alone and typed, so botocore's validation of them is skipped.
        user_agent=USER_AGENT,
        parameter_validation=False,
    )


@overload
def client(
    service: Literal["sesv2"],
    *,
    region: str | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    **options: Any,
) -> AbstractAsyncContextManager[SESV2Client]: ...
@overload
def client(
    service: Literal["sns"],
    *,
    region: str | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    **options: Any,
) -> AbstractAsyncContextManager[SNSClient]: ...
def client(
    service: str,
    *,
    region: str | None = None,
    pool_size: int = DEFAULT_POOL_SIZE,
    **options: Any,
) -> Any:
    """A client to open with ``async with``; ``options`` go to botocore as they are (the
    bench's fake endpoint and keys)."""
    return aioboto3.Session().client(
        service,
        region_name=region or region_from_environment(),
        config=client_config(pool_size=pool_size),
        **options,
    )


@dataclass(frozen=True)
class Refusal:
    """What AWS answered when it refused a call."""

    code: str
    message: str
    http_status: int | None

    def __str__(self) -> str:
        return f"{self.code} (HTTP {self.http_status})"


@overload
def refusal(exc: ClientError) -> Refusal: ...
@overload
def refusal(exc: BaseException) -> Refusal | None: ...
def refusal(exc: BaseException) -> Refusal | None:
    """AWS's answer to a refused call; None when AWS did not answer (network, timeout)."""
    if not isinstance(exc, ClientError):
        return None
    error = exc.response.get("Error", {})
    return Refusal(
        code=str(error.get("Code", "Unknown")),
        message=str(error.get("Message", "")),
        http_status=exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"),
    )
