"""The sender's contact (TEGAMI_SENDER_CONTACT) as HTML, as mails' footers and the unsubscribe
pages show it; pure."""

from __future__ import annotations

import html
import re

_CONTACT_ADDRESS = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def contact_html(contact: str, *, link_style: str | None = None) -> str:
    """The support contact as HTML: escaped, each email address in it a ``mailto:`` link
    (with ``link_style`` inline: mail clients drop style sheets; pages keep their own)."""
    style = f' style="{link_style}"' if link_style else ""
    return _CONTACT_ADDRESS.sub(
        lambda m: f'<a href="mailto:{m[0]}"{style}>{m[0]}</a>',
        html.escape(contact, quote=True),
    )
