"""One confirmation email, built at send time: text and HTML, in the signer's language.

The address and the link exist only in memory here, between the claim that read the
address from PostgreSQL and the SMTP server: `Letter` keeps them out of its repr so that a
stray log line or traceback cannot print them.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

from babel.dates import format_datetime as format_local_datetime

from consumers.email_texts import TEXTS, language_of


@dataclass(frozen=True, slots=True)
class Letter:
    kind: str  # confirm, resend or reminder
    to: str = field(repr=False)
    language: str | None
    title: str
    target: str
    link: str = field(repr=False)
    expires_at: datetime


def _expiry(expires_at: datetime, language: str) -> str:
    moment = format_local_datetime(
        expires_at.astimezone(UTC), "d MMMM y, HH:mm", tzinfo=UTC, locale=language
    )
    return f"{moment} UTC"


def compose(letter: Letter, *, sender: str) -> EmailMessage:
    """The message, multipart/alternative: plain text first, then the same in HTML."""
    language = language_of(letter.language)
    texts = TEXTS[language]
    values = {
        "title": letter.title,
        "target": letter.target,
        "expires": _expiry(letter.expires_at, language),
    }
    said = {
        key: texts[key].format(**values)
        for key in (f"intro.{letter.kind}", "action", "expires", "ignore", "not_me")
    }
    text = "\n\n".join(
        [
            said[f"intro.{letter.kind}"],
            f"{said['action']}\n{letter.link}",
            said["expires"],
            said["ignore"],
            said["not_me"],
        ]
    )
    e = {key: html.escape(value) for key, value in said.items()}
    link = html.escape(letter.link, quote=True)
    page = (
        f'<!DOCTYPE html>\n<html lang="{language}"><head><meta charset="utf-8"></head>'
        '<body style="font-family: sans-serif; line-height: 1.5">\n'
        f"<p>{e[f'intro.{letter.kind}']}</p>\n"
        f"<p>{e['action']}</p>\n"
        f'<p><a href="{link}" style="display: inline-block; padding: 0.6em 1.2em; '
        f'background: #b00020; color: #fff; text-decoration: none">'
        f"{html.escape(texts['button'])}</a></p>\n"
        f'<p style="font-size: 0.9em"><a href="{link}">{link}</a></p>\n'
        f"<p>{e['expires']}</p>\n<p>{e['ignore']}</p>\n<p>{e['not_me']}</p>\n"
        "</body></html>\n"
    )
    message = EmailMessage()
    message["From"] = sender
    message["To"] = letter.to
    message["Subject"] = texts[f"subject.{letter.kind}"].format(**values)
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(sender)[1].rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"  # no out-of-office replies, please
    message.set_content(text)
    message.add_alternative(page, subtype="html")
    message["Content-Language"] = language  # after the content, which resets Content-*
    return message
