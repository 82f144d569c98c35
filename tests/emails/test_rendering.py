"""What a recipient sees in each rendered mail, and what the renderer refuses to build."""

from __future__ import annotations

import email
import email.policy
import html
import re
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest

from app.emails.catalog import EMAIL_KINDS, EmailKind
from app.emails.rendering import SenderInfo, render_email
from app.models import Category

FROM = "PRO WORKS <noreply@proworks.jp>"
TO = "taro@example.com"
UNSUBSCRIBE_URL = "https://proworks.jp/unsubscribe/v1.AbC-123_xyz"
SENDER = SenderInfo(
    name="株式会社プロワークス",
    postal_address="〒100-0001 東京都千代田区千代田1-1",
    contact="support@proworks.jp",
)
NOW = datetime(2025, 4, 1, 9, 30, tzinfo=timezone(timedelta(hours=9)))

LINKS = {
    "verify-email": "https://proworks.jp/verify?token=v-123",
    "password-reset": "https://proworks.jp/reset?token=r-456",
    "email-change": "https://proworks.jp/email/confirm?token=c-789",
    "matching-notification": "https://proworks.jp/jobs/42?utm_source=mail&x=1",
}
EXPIRY = "※ このリンクの有効期限は1時間です。"
# The seed's sample bodies, line by line; {link} is where the seed has its placeholder link.
SEED_LINES = {
    "verify-email": (
        "PRO WORKS へのご登録ありがとうございます。",
        "以下のリンクをクリックして、メールアドレスの確認を完了してください。",
        "▶ {link}",
        EXPIRY,
        "※ このメールに心当たりがない場合は、削除してください。",
    ),
    "password-reset": (
        "パスワードリセットのリクエストを受け付けました。",
        "以下のリンクをクリックして、新しいパスワードを設定してください。",
        "▶ {link}",
        EXPIRY,
        "※ このリクエストに心当たりがない場合は、このメールを無視してください。"
        "パスワードは変更されません。",
    ),
    "email-change": (
        "メールアドレス変更のリクエストを受け付けました。",
        "以下のリンクをクリックして、新しいメールアドレスを確認してください。",
        "▶ {link}",
        EXPIRY,
        "※ このリクエストに心当たりがない場合は、このメールを無視してください。"
        "メールアドレスは変更されません。",
    ),
    "matching-notification": (
        "新しいマッチング案件が見つかりました。",
        "詳細を確認するには、以下のリンクをクリックしてください。",
        "▶ {link}",
        # A space after the URL so that no linkifier swallows the Japanese that follows.
        f"※ 配信停止をご希望の場合は、{UNSUBSCRIBE_URL} をクリックしてください。",
    ),
}
KINDS = [pytest.param(kind, id=name) for name, kind in EMAIL_KINDS.items()]
ACCOUNT_KINDS = [
    pytest.param(kind, id=name)
    for name, kind in EMAIL_KINDS.items()
    if kind.category is Category.ACCOUNT
]
MATCHING = EMAIL_KINDS["matching-notification"]


def _render(
    kind: EmailKind,
    *,
    link: str | None = None,
    to: str = TO,
    from_address: str = FROM,
    unsubscribe_url: str = UNSUBSCRIBE_URL,
) -> bytes:
    (param,) = kind.params
    return render_email(
        kind=kind,
        params={param: LINKS[kind.name] if link is None else link},
        to=to,
        from_address=from_address,
        unsubscribe_url=unsubscribe_url,
        sender=SENDER,
        now=NOW,
    )


def _parse(raw: bytes) -> EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def _body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body(preferencelist=(subtype,))
    assert part is not None and part.get_content_type() == f"text/{subtype}"
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


@pytest.mark.parametrize("kind", KINDS)
def test_recipient_sees_subject_sender_and_date(kind: EmailKind) -> None:
    message = _parse(_render(kind))

    assert message["Subject"] == kind.subject
    assert message["From"] == FROM
    assert message["To"] == TO
    assert parsedate_to_datetime(message["Date"]) == NOW
    assert message["Message-ID"] is None  # SES assigns it


@pytest.mark.parametrize("kind", KINDS)
def test_every_mail_offers_one_click_unsubscribe(kind: EmailKind) -> None:
    message = _parse(_render(kind))

    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE_URL}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize("kind", KINDS)
def test_parts_are_utf8_plain_text_then_html(kind: EmailKind) -> None:
    message = _parse(_render(kind))

    assert message.get_content_type() == "multipart/alternative"
    assert message["MIME-Version"] == "1.0"
    parts = list(message.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert [part.get_content_charset() for part in parts] == ["utf-8", "utf-8"]


@pytest.mark.parametrize("kind", KINDS)
def test_text_body_follows_the_seed_line_by_line(kind: EmailKind) -> None:
    link = LINKS[kind.name]
    lines = _body(_parse(_render(kind)), "plain").splitlines()

    for expected in SEED_LINES[kind.name]:
        assert expected.format(link=link) in lines
    assert any(UNSUBSCRIBE_URL in line for line in lines)
    assert (EXPIRY in lines) == (kind.lifetime is not None)


@pytest.mark.parametrize("kind", ACCOUNT_KINDS)
def test_account_mail_says_unsubscribing_stops_only_job_news(kind: EmailKind) -> None:
    message = _parse(_render(kind))
    text = _body(message, "plain")
    page = _body(message, "html")

    for body in (text, page):
        assert "案件のお知らせメール" in body
        assert "配信停止後も届きます" in body
    assert UNSUBSCRIBE_URL in text.splitlines()
    assert f'href="{UNSUBSCRIBE_URL}"' in page


def test_matching_notification_names_the_sender() -> None:
    message = _parse(_render(MATCHING))
    text = _body(message, "plain")
    page = _body(message, "html")

    for line in (
        f"送信者: {SENDER.name}",
        f"住所: {SENDER.postal_address}",
        f"お問い合わせ先: {SENDER.contact}",
    ):
        assert line in text.splitlines()
    for value in (SENDER.name, SENDER.postal_address, SENDER.contact):
        assert html.escape(value) in page
    # The contact can be written to in one tap.
    assert f'href="mailto:{SENDER.contact}"' in page


@pytest.mark.parametrize("kind", KINDS)
def test_html_part_links_the_url_and_keeps_the_notes(kind: EmailKind) -> None:
    link = LINKS[kind.name]
    page = _body(_parse(_render(kind)), "html")

    assert '<html lang="ja">' in page
    assert 'name="viewport"' in page
    assert f'href="{html.escape(link)}"' in page
    assert f'href="{html.escape(UNSUBSCRIBE_URL)}"' in page
    for line in SEED_LINES[kind.name]:
        if line.startswith("※") and UNSUBSCRIBE_URL not in line:
            assert line in page
    assert "<script" not in page


@pytest.mark.parametrize("kind", KINDS)
def test_markup_in_a_param_is_escaped_in_html(kind: EmailKind) -> None:
    hostile = 'https://proworks.jp/x?a="><script>alert(1)</script>'
    message = _parse(_render(kind, link=hostile))
    page = _body(message, "html")

    assert "<script>" not in page
    assert hostile not in page
    assert html.escape(hostile, quote=True) in page
    assert f"▶ {hostile}" in _body(message, "plain").splitlines()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("url_length", [len(UNSUBSCRIBE_URL), 400])
def test_wire_format_is_7bit_crlf_with_short_lines(kind: EmailKind, url_length: int) -> None:
    url = UNSUBSCRIBE_URL + "x" * (url_length - len(UNSUBSCRIBE_URL))
    raw = _render(kind, unsubscribe_url=url, from_address="プロワークス <noreply@proworks.jp>")

    assert raw.endswith(b"\r\n")
    for line in raw[:-2].split(b"\r\n"):
        assert line.isascii()
        assert b"\r" not in line and b"\n" not in line
        assert len(line) <= 998
    assert raw.decode("utf-8") == raw.decode("ascii")
    message = _parse(raw)
    assert message["From"] == "プロワークス <noreply@proworks.jp>"
    assert message["List-Unsubscribe"] == f"<{url}>"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", "taro@example.com\r\nBcc: victim@example.com"),
        ("to", "taro@example.com\nBcc: victim@example.com"),
        ("to", "taro@example.com\r"),
        ("from_address", "PRO WORKS <noreply@proworks.jp>\r\nReply-To: evil@example.com"),
        ("unsubscribe_url", "https://proworks.jp/u/t\r\nBcc: victim@example.com"),
        ("unsubscribe_url", "https://proworks.jp/u/t\x00"),
        ("to", "taro@example.com\u2028"),
    ],
)
def test_header_injection_is_refused(field: str, value: str) -> None:
    arguments = {"to": TO, "from_address": FROM, "unsubscribe_url": UNSUBSCRIBE_URL, field: value}
    with pytest.raises(ValueError):
        _render(
            MATCHING,
            to=arguments["to"],
            from_address=arguments["from_address"],
            unsubscribe_url=arguments["unsubscribe_url"],
        )


@pytest.mark.parametrize(
    "to", ["a@example.com, b@example.com", "not an address", "", "ユーザー@example.com"]
)
def test_recipient_must_be_one_ascii_address(to: str) -> None:
    with pytest.raises(ValueError):
        _render(MATCHING, to=to)


@pytest.mark.parametrize(
    "url", ["https://proworks.jp/u/a b", "https://proworks.jp/u/a>b", "", "https://x/" + "a" * 990]
)
def test_unsubscribe_url_that_would_break_the_header_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        _render(MATCHING, unsubscribe_url=url)


@pytest.mark.parametrize(
    "params",
    [{}, {"job_url": LINKS["matching-notification"], "extra": "x"}, {"reset_url": "https://x"}],
)
def test_params_must_match_the_kind(params: dict[str, str]) -> None:
    with pytest.raises((KeyError, ValueError)):
        render_email(
            kind=MATCHING,
            params=params,
            to=TO,
            from_address=FROM,
            unsubscribe_url=UNSUBSCRIBE_URL,
            sender=SENDER,
            now=NOW,
        )


def test_line_break_in_a_link_is_refused() -> None:
    with pytest.raises(ValueError):
        _render(MATCHING, link="https://proworks.jp/jobs/1\n※ 偽の案内")


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        render_email(
            kind=MATCHING,
            params={"job_url": LINKS["matching-notification"]},
            to=TO,
            from_address=FROM,
            unsubscribe_url=UNSUBSCRIBE_URL,
            sender=SENDER,
            now=NOW.replace(tzinfo=None),
        )


def test_date_header_keeps_the_offset_it_was_given() -> None:
    message = _parse(_render(MATCHING))

    assert message["Date"].endswith("+0900")
    assert parsedate_to_datetime(message["Date"]).astimezone(UTC) == NOW.astimezone(UTC)


# Japanese text (kana, kanji, full-width punctuation) right against a link tag: SpamAssassin's
# HTML_OBFUSCATE rules fire on `、<a>こちら</a>から`.
_JAPANESE = "[\u3000-\u30ff\u3400-\u9fff\uff00-\uffef]"
_GLUED = re.compile(
    f"{_JAPANESE}<a\\b|</a>{_JAPANESE}|<a\\b[^>]*>[^<]*{_JAPANESE}[^<]*</a>{_JAPANESE}"
)


@pytest.mark.parametrize("kind", KINDS)
def test_no_link_is_glued_to_japanese_text(kind: EmailKind) -> None:
    page = _body(_parse(_render(kind)), "html")

    assert page.count("<a ") >= 2
    assert not _GLUED.search(page), _GLUED.findall(page)


@pytest.mark.parametrize("kind", KINDS)
def test_one_spelling_and_one_colon_style(kind: EmailKind) -> None:
    message = _parse(_render(kind))
    for body in (_body(message, "plain"), _body(message, "html")):
        assert "お客さま" not in body
        # Labels as the seed writes them ("件名: "): an ASCII colon and a space.
        assert "：" not in body
