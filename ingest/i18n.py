"""The petition page's languages: Italian and English, numbers and dates per locale.

Babel formats numbers, percentages, dates and country names (CLDR data). The page's own
sentences are a small table per language here: two languages and some thirty strings do
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
        "live": "aggiornato in tempo reale",
        "language_switch": "English",
        "widget_link": "Firma anche tu",
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
        "live": "updated live",
        "language_switch": "Italiano",
        "widget_link": "Sign it too",
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
