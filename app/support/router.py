"""GET /emails (find mail) and GET /recipients/{email}/why (say why, in Japanese)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AfterValidator, AwareDatetime, BeforeValidator

from app.api_keys import Caller, ReadMailKeyDep, ReadRecipientsKeyDep
from app.config import Settings
from app.db import NO_NUL, SessionDep
from app.deps import SettingsDep
from app.errors import error_responses
from app.models import MailType, MessageStatus
from app.recipients.addresses import ADDRESS_JSON_SCHEMA, address_hash, check_address
from app.recipients.router import EmailPath
from app.support import search, service
from app.support.schemas import EmailFoundRead, EmailSearchRead, LastEventRead, VerdictRead
from app.support.search import CURSOR_PATTERN, TAG_FILTER_PATTERN

router = APIRouter(tags=["support"])


def _hash(settings: Settings, email: str) -> bytes:
    return address_hash(email, secret=settings.address_hash_secret.get_secret_value())


def _address_or_none(value: str | None) -> str | None:
    return check_address(value) if value is not None else None


def _iso_only(value: object) -> object:
    # pydantic would read a number as a Unix time: ISO 8601 text only.
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[\d.]+(e[+-]?\d+)?\s*", value, re.I):
        raise ValueError("must be an ISO 8601 date-time with a UTC offset")
    return value


def own_mail_only(caller: Caller) -> int | None:
    """`admin` and `support` keys find every mail; any other key only the mail it sent."""
    return None if caller.sees_every_mail else caller.key_id


@router.get(
    "/emails",
    response_model=EmailSearchRead,
    summary="Find mail by recipient, user, type, status, tag and time",
    operation_id="findEmails",
    description="Newest first, in pages of `limit` (at most 100): pass `next_cursor` back as "
    "`cursor` for the next. `to` matches the recipient case-insensitively, and either spelling "
    'of a legacy carrier address (`taro.@docomo.ne.jp`, `"taro."@docomo.ne.jp`). A `test` '
    "key finds only the mail it sent.",
    responses=error_responses(
        401, 403, 422, 503, _422="A bad filter or cursor (`invalid_request`)."
    ),
)
async def find_emails(
    settings: SettingsDep,
    session: SessionDep,
    caller: ReadMailKeyDep,
    to: Annotated[
        str | None,
        Query(
            max_length=254,
            description="The recipient, in any case or spelling.",
            json_schema_extra=dict(ADDRESS_JSON_SCHEMA),
        ),
        AfterValidator(_address_or_none),
    ] = None,
    user_id: Annotated[str | None, Query(max_length=200, pattern=NO_NUL)] = None,
    type: MailType | None = None,
    status: MessageStatus | None = None,
    tag: Annotated[
        list[str] | None,
        Query(
            max_length=10,
            description="`key:value` (e.g. `job_id:J-1`); repeat for mail carrying them all.",
            json_schema_extra={"items": {"type": "string", "pattern": TAG_FILTER_PATTERN}},
        ),
    ] = None,
    since: Annotated[
        AwareDatetime | None,
        Query(description="Accepted at or after (ISO 8601, with offset)."),
        BeforeValidator(_iso_only),
    ] = None,
    until: Annotated[
        AwareDatetime | None,
        Query(description="Accepted before (ISO 8601, with offset)."),
        BeforeValidator(_iso_only),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=search.MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=CURSOR_PATTERN)] = None,
) -> EmailSearchRead:
    page = await search.find_emails(
        session,
        filters=search.Filters(
            address_hash=_hash(settings, to) if to is not None else None,
            user_id=user_id,
            type=type.value if type is not None else None,
            status=status.value if status is not None else None,
            tags=dict(search.parse_tag(t) for t in tag) if tag else None,
            since=since,
            until=until,
            api_key_id=own_mail_only(caller),
        ),
        limit=limit,
        cursor=cursor,
    )
    return EmailSearchRead(
        emails=[
            EmailFoundRead(
                id=e.id,
                type=MailType(e.type),
                status=MessageStatus(e.status),
                to=e.to,
                user_id=e.user_id,
                tags=e.tags,
                created_at=e.created_at,
                last_event=LastEventRead(
                    kind=e.last_event_kind, detail=e.last_event_detail, created_at=e.last_event_at
                )
                if e.last_event_kind is not None and e.last_event_at is not None
                else None,
            )
            for e in page.emails
        ],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/recipients/{email:anytext}/why",
    response_model=VerdictRead,
    summary="Why a person did or did not get a mail, in Japanese",
    operation_id="why",
    description="The verdict on the newest mail of `type` (any type when omitted) to the "
    "address, or on what stops mail to it (erased, suppressed, opted out): `explanation` and "
    "`next_step` are Japanese, for support staff to read to the customer.",
    responses=error_responses(401, 403, 422, 503, _422="Not an email address (`invalid_request`)."),
)
async def why(
    email: EmailPath,
    settings: SettingsDep,
    session: SessionDep,
    caller: ReadRecipientsKeyDep,
    type: MailType | None = None,
) -> VerdictRead:
    verdict = await service.why(
        session,
        address=email,
        address_hash=_hash(settings, email),
        type=type.value if type is not None else None,
        api_key_id=own_mail_only(caller),
    )
    return VerdictRead(
        verdict=verdict.verdict,
        email_id=verdict.email_id,
        explanation=verdict.explanation,
        next_step=verdict.next_step,
    )
