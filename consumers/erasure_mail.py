"""The email that answers a signer's request to be forgotten: one link, in their language.

It names no campaign: the address may have been typed by someone else, and the message
must not tell a reader of that mailbox more than the owner asked. Only the link's page
and its button erase (runtime/erasure_requests.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr

from consumers.email_texts import language_of
from runtime.erasure_requests import ForgetLetter

TEXTS: dict[str, dict[str, str]] = {
    "it": {
        "subject": "La tua richiesta di cancellazione",
        "body": (
            "Qualcuno ha chiesto di cancellare le firme fatte con questo indirizzo email."
            "\n\nSe sei stato tu, apri questo link e conferma: cancelleremo le tue firme e i"
            " tuoi dati da tutte le petizioni.\n{link}\n\nIl link scade il {expires} UTC."
            "\n\nSe non sei stato tu, ignora questa email: non cambia nulla."
        ),
    },
    "en": {
        "subject": "Your request to be forgotten",
        "body": (
            "Someone asked us to delete the signatures made with this email address."
            "\n\nIf that was you, open this link and confirm: we will delete your signatures"
            " and your details from every petition.\n{link}\n\nThe link expires on {expires}"
            " UTC.\n\nIf it was not you, ignore this email: nothing changes."
        ),
    },
}


def compose_forget(letter: ForgetLetter, *, sender: str) -> EmailMessage:
    language = language_of(letter.language)
    texts = TEXTS[language]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = letter.to
    message["Subject"] = texts["subject"]
    message["Date"] = format_datetime(datetime.now(UTC))
    domain = parseaddr(sender)[1].rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    expires = letter.expires_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
    message.set_content(texts["body"].format(link=letter.link, expires=expires))
    message["Content-Language"] = language
    return message
