"""The petition page's languages: Italian and English, numbers and dates per locale.

Babel formats numbers, percentages, dates and country names (CLDR data). The page's own
sentences are a small table per language here: two languages and a few dozen strings do
not need a gettext catalogue and its compile step.
"""

from __future__ import annotations

from datetime import date

from babel import Locale
from babel.core import UnknownLocaleError
from babel.dates import format_date
from babel.numbers import format_decimal, format_percent

LANGUAGES = ("it", "en")
DEFAULT = "en"

MESSAGES: dict[str, dict[str, str]] = {
    "it": {
        "page_title": "{title} — firma la petizione",
        "to": "A: {target}",
        "goal": "Obiettivo {goal} firme",
        "count": "firme",
        "of_goal": "{percent} dell'obiettivo",
        "progress_label": "Firme raccolte rispetto all'obiettivo",
        "by_country": "Firme per paese",
        "other_countries": "Altri paesi",
        "updates": "Aggiornamenti",
        "sign_heading": "Firma la petizione",
        "first_name": "Nome",
        "last_name": "Cognome",
        "email": "Email",
        "country": "Paese",
        "choose_country": "Scegli il paese",
        "postcode": "CAP (facoltativo)",
        "consent": "Voglio ricevere aggiornamenti su questa campagna",
        "sign": "Firma",
        "privacy": "Il tuo nome e la tua email non saranno mai mostrati pubblicamente.",
        "thanks_title": "Grazie, {name}!",
        "thanks_body": "La tua firma per «{title}» è stata ricevuta.",
        "back": "Torna alla petizione",
        "closed": "Questa petizione è chiusa: non raccoglie più firme.",
        "errors_heading": "Controlla i campi evidenziati:",
        "unavailable": "Non è stato possibile registrare la firma ora. Riprova tra poco.",
        "not_found": "Questa petizione non esiste.",
        "too_large": "La richiesta è troppo grande.",
        "rate_limited": "Troppe firme inviate da questa connessione. Riprova tra qualche minuto.",
        "live": "aggiornato in tempo reale",
        "language_switch": "English",
        "widget_link": "Firma anche tu",
        "confirm_note": (
            "Ti invieremo un'email con un link: la firma conta solo dopo che l'avrai confermata."
        ),
        "thanks_check_email": (
            "Controlla la tua casella di posta: ti inviamo un'email con il link per confermare"
            " la firma, che conta solo dopo la conferma."
        ),
        "forget_title": "Cancella le tue firme",
        "forget_intro": (
            "Premendo il pulsante cancelliamo le firme fatte con il tuo indirizzo email e i"
            " tuoi dati da tutte le petizioni. Non si può annullare."
        ),
        "forget_button": "Cancella le mie firme",
        "forget.forgotten.title": "Abbiamo cancellato le tue firme",
        "forget.forgotten.body": "Le tue firme e i tuoi dati non sono più conservati.",
        "forget.already_used.title": "Questo link è già stato usato",
        "forget.already_used.body": "Non c'è altro da fare qui.",
        "forget.expired.title": "Questo link è scaduto",
        "forget.expired.body": "Puoi chiedere un nuovo link.",
        "forget.unknown.title": "Questo link non è valido",
        "forget.unknown.body": "Controlla di aver copiato tutto il link dall'email.",
        "confirm_title": "Conferma la tua firma",
        "confirm_intro": (
            "Qualcuno ha firmato la petizione «{title}» con questo indirizzo email. Se la"
            " firma è tua, confermala: solo allora sarà contata."
        ),
        "confirm_not_me": "Se non è tua, diccelo qui: cancelliamo nome e indirizzo email.",
        "confirm_button": "Conferma la mia firma",
        "remove_button": "Non ero io",
        "choose_action": "Scegli uno dei due pulsanti della pagina.",
        "try_later": "Non è stato possibile completare l'operazione ora. Riprova tra poco.",
        "sign_yourself": "Firma la petizione",
        "sign_again": "Firma di nuovo",
        "outcome.confirmed.title": "Grazie: la tua firma è confermata",
        "outcome.confirmed.body": "La tua firma per «{title}» è contata.",
        "outcome.already_confirmed.title": "Grazie: la tua firma è confermata",
        "outcome.already_confirmed.body": "La tua firma per «{title}» è contata.",
        "outcome.removed.title": "Abbiamo cancellato la firma",
        "outcome.removed.body": (
            "Nome e indirizzo email sono stati cancellati e la firma non è stata contata."
            " Se vuoi, puoi comunque firmare personalmente la petizione «{title}»."
        ),
        "outcome.already_used.title": "Questo link è già stato usato",
        "outcome.already_used.body": "Non c'è altro da fare qui.",
        "outcome.expired.title": "Questo link è scaduto",
        "outcome.expired.body": (
            "Per confermare, firma di nuovo la petizione «{title}»: ti invieremo un nuovo link."
        ),
        "outcome.closed.title": "Questa petizione è chiusa",
        "outcome.closed.body": (
            "«{title}» non raccoglie più firme: non è più possibile confermarle."
        ),
        "outcome.unknown.title": "Questo link non è valido",
        "outcome.unknown.body": "Controlla di aver copiato tutto il link dall'email.",
        "reason.invalid_email": "Indirizzo email non valido",
        "reason.invalid_country": "Scegli un paese",
        "reason.empty_field": "Campo obbligatorio",
        "reason.missing_field": "Campo obbligatorio",
        "reason.field_too_long": "Testo troppo lungo",
        "reason.control_characters": "Contiene caratteri non ammessi",
        "reason.nul_byte": "Contiene caratteri non ammessi",
        "reason.other": "Valore non valido",
    },
    "en": {
        "page_title": "{title} — sign the petition",
        "to": "To: {target}",
        "goal": "Goal: {goal} signatures",
        "count": "signatures",
        "of_goal": "{percent} of the goal",
        "progress_label": "Signatures collected towards the goal",
        "by_country": "Signatures by country",
        "other_countries": "Other countries",
        "updates": "Updates",
        "sign_heading": "Sign the petition",
        "first_name": "First name",
        "last_name": "Last name",
        "email": "Email",
        "country": "Country",
        "choose_country": "Choose your country",
        "postcode": "Postcode (optional)",
        "consent": "Keep me updated about this campaign",
        "sign": "Sign",
        "privacy": "Your name and email will never be shown publicly.",
        "thanks_title": "Thank you, {name}!",
        "thanks_body": "Your signature for “{title}” has been received.",
        "back": "Back to the petition",
        "closed": "This petition is closed: it no longer collects signatures.",
        "errors_heading": "Please check the highlighted fields:",
        "unavailable": "Your signature could not be recorded just now. Please try again shortly.",
        "not_found": "There is no such petition.",
        "too_large": "The request is too large.",
        "rate_limited": (
            "Too many signatures sent from this connection. Please try again in a few minutes."
        ),
        "live": "updated live",
        "language_switch": "Italiano",
        "widget_link": "Sign it too",
        "confirm_note": "We will email you a link: your signature counts once you confirm it.",
        "thanks_check_email": (
            "Please check your inbox: we are sending you an email with a link to confirm your"
            " signature, which counts only once confirmed."
        ),
        "forget_title": "Delete your signatures",
        "forget_intro": (
            "Pressing the button deletes the signatures made with your email address and"
            " your details from every petition. It cannot be undone."
        ),
        "forget_button": "Delete my signatures",
        "forget.forgotten.title": "We deleted your signatures",
        "forget.forgotten.body": "Your signatures and your details are no longer kept.",
        "forget.already_used.title": "This link has already been used",
        "forget.already_used.body": "There is nothing more to do here.",
        "forget.expired.title": "This link has expired",
        "forget.expired.body": "You can ask for a new link.",
        "forget.unknown.title": "This link is not valid",
        "forget.unknown.body": "Check that you copied the whole link from the email.",
        "confirm_title": "Confirm your signature",
        "confirm_intro": (
            "Someone signed the petition “{title}” with this email address. If it was you,"
            " confirm your signature: only then will it be counted."
        ),
        "confirm_not_me": "If it wasn't you, tell us here: we delete the name and email address.",
        "confirm_button": "Confirm my signature",
        "remove_button": "This wasn't me",
        "choose_action": "Please choose one of the two buttons on the page.",
        "try_later": "This could not be done just now. Please try again shortly.",
        "sign_yourself": "Sign the petition",
        "sign_again": "Sign again",
        "outcome.confirmed.title": "Thank you: your signature is confirmed",
        "outcome.confirmed.body": "Your signature for “{title}” is counted.",
        "outcome.already_confirmed.title": "Thank you: your signature is confirmed",
        "outcome.already_confirmed.body": "Your signature for “{title}” is counted.",
        "outcome.removed.title": "We removed the signature",
        "outcome.removed.body": (
            "The name and email address have been deleted, and nothing was counted. You may"
            " still sign “{title}” yourself if you wish."
        ),
        "outcome.already_used.title": "This link has already been used",
        "outcome.already_used.body": "There is nothing more to do here.",
        "outcome.expired.title": "This link has expired",
        "outcome.expired.body": (
            "To confirm, please sign “{title}” again: we will send you a new link."
        ),
        "outcome.closed.title": "This petition is closed",
        "outcome.closed.body": (
            "“{title}” no longer collects signatures, so they can no longer be confirmed."
        ),
        "outcome.unknown.title": "This link is not valid",
        "outcome.unknown.body": "Please check that you copied the whole link from the email.",
        "reason.invalid_email": "This email address is not valid",
        "reason.invalid_country": "Choose a country",
        "reason.empty_field": "Required",
        "reason.missing_field": "Required",
        "reason.field_too_long": "Too long",
        "reason.control_characters": "Contains characters that are not allowed",
        "reason.nul_byte": "Contains characters that are not allowed",
        "reason.other": "Not a valid value",
    },
}


def choose_language(requested: str | None, accept_language: str) -> str:
    """`?lang=` if supported, else the first supported language the browser prefers."""
    if requested in LANGUAGES:
        return requested
    ranked: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")):
        tag, _, params = item.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        language = tag.strip().lower().split("-")[0]
        if language in LANGUAGES and quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else DEFAULT


class Texts:
    """Everything a template needs to say something in one language."""

    def __init__(self, language: str) -> None:
        self.language = language if language in LANGUAGES else DEFAULT
        self.locale = Locale.parse(self.language)
        self.other = "en" if self.language == "it" else "it"

    def __call__(self, key: str, **values: object) -> str:
        return MESSAGES[self.language][key].format(**values)

    def reason(self, code: str) -> str:
        return MESSAGES[self.language].get(
            f"reason.{code}", MESSAGES[self.language]["reason.other"]
        )

    def number(self, value: int) -> str:
        return format_decimal(value, locale=self.locale)

    def percent(self, value: float) -> str:
        return format_percent(value, locale=self.locale, format="#,##0.#%")

    def day(self, value: date) -> str:
        return format_date(value, format="long", locale=self.locale)

    def country(self, code: str) -> str:
        if code == "other":  # the public totals' merged entry for small countries
            return self("other_countries")
        return str(self.locale.territories.get(code, code))

    def countries(self, codes: set[str] | frozenset[str]) -> list[tuple[str, str]]:
        """(code, localised name), sorted by name."""
        return sorted(((c, self.country(c)) for c in codes), key=lambda pair: pair[1])


def texts(language: str) -> Texts:
    try:
        return Texts(language)
    except UnknownLocaleError:
        return Texts(DEFAULT)
