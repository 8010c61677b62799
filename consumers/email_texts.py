"""The words of the confirmation emails, one small table per language.

Kept apart from the code that builds the message so that a translation is a change to
this table only. Every value is a `str.format` template; `consumers.emails` escapes what it
puts into the HTML part. No email names its recipient: the address may have been typed by
someone else, and the message must not repeat what they typed.
"""

from __future__ import annotations

LANGUAGES = ("it", "en")
DEFAULT = "en"

TEXTS: dict[str, dict[str, str]] = {
    "it": {
        "subject.confirm": "Conferma la tua firma: {title}",
        "subject.resend": "Conferma la tua firma: {title}",
        "subject.reminder": "Promemoria: la tua firma per «{title}» non è ancora confermata",
        "intro.confirm": "Hai firmato la petizione «{title}» (destinatari: {target}).",
        "intro.resend": (
            "Hai firmato di nuovo la petizione «{title}» (destinatari: {target}): ecco di "
            "nuovo il link per confermare la tua firma."
        ),
        "intro.reminder": (
            "Hai firmato la petizione «{title}» (destinatari: {target}), ma la tua firma non "
            "è ancora confermata."
        ),
        "action": "Conferma la firma aprendo questo link:",
        "button": "Conferma la mia firma",
        "expires": "Il link vale fino al {expires}.",
        "ignore": "Se ignori questa email, la tua firma non verrà contata.",
        "not_me": (
            "Non hai firmato tu? Apri lo stesso link e scegli «Non sono stato io»: "
            "cancelleremo i dati inseriti con il tuo indirizzo."
        ),
    },
    "en": {
        "subject.confirm": "Confirm your signature: {title}",
        "subject.resend": "Confirm your signature: {title}",
        "subject.reminder": "Reminder: your signature for “{title}” is not confirmed yet",
        "intro.confirm": "You signed the petition “{title}”, addressed to {target}.",
        "intro.resend": (
            "You signed the petition “{title}”, addressed to {target}, once more: here is "
            "the link to confirm your signature again."
        ),
        "intro.reminder": (
            "You signed the petition “{title}”, addressed to {target}, but your signature "
            "is not confirmed yet."
        ),
        "action": "Confirm your signature by opening this link:",
        "button": "Confirm my signature",
        "expires": "The link works until {expires}.",
        "ignore": "If you ignore this email, your signature will not be counted.",
        "not_me": (
            "Didn't sign? Open the same link and choose “This wasn't me”: we will delete "
            "the details entered with your address."
        ),
    },
}


def language_of(tag: str | None) -> str:
    """The signer's language (the primary subtag of what they sent), or the default."""
    primary = (tag or "").split("-", 1)[0].lower()
    return primary if primary in LANGUAGES else DEFAULT
