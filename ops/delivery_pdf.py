"""The delivery document as PDF (fpdf2): a first page with the campaign, its target, goal,
total and counts by country, then every signature with its country and date, paginated.

Names come in many scripts. Noto Sans sets Latin, Cyrillic and Greek; fallback fonts set
what it lacks: Noto Sans Arabic (Arabic, Persian), Hebrew and Devanagari, WenQuanYi Micro
Hei (Chinese, Japanese, Korean), DejaVu Sans for anything else. Text shaping (HarfBuzz,
through uharfbuzz) joins Arabic letters, orders right-to-left text and forms Devanagari
clusters. The fonts come from Debian packages (scripts/bootstrap installs them).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

from fpdf import FPDF

from ops.delivery import Delivery, Signer, clean_text, country_name, counts_note

FONT_ROOT = Path("/usr/share/fonts/truetype")
DEBIAN_PACKAGES = ("fonts-noto-core", "fonts-wqy-microhei", "fonts-dejavu-core")
REGULAR = "noto/NotoSans-Regular.ttf"
BOLD = "noto/NotoSans-Bold.ttf"
FALLBACKS = (
    ("noto-arabic", "noto/NotoSansArabic-Regular.ttf"),
    ("noto-hebrew", "noto/NotoSansHebrew-Regular.ttf"),
    ("noto-devanagari", "noto/NotoSansDevanagari-Regular.ttf"),
    ("wqy-microhei", "wqy/wqy-microhei.ttc"),
    ("dejavu", "dejavu/DejaVuSans.ttf"),
)

# fontTools, which fpdf2 uses to subset the fonts, logs its work at info level, some of it
# about the glyphs kept: which characters the names contain is not for the logs.
logging.getLogger("fontTools").setLevel(logging.WARNING)

BODY = 9.0  # points
SMALLEST = 6.0  # a long name is set smaller down to this size, then wrapped
LINE = 5.0  # mm per line of the list
# So many characters fit a name column at BODY size whatever they are (the widest, a CJK
# ideograph or a W, is under 3.5 mm), except presentation forms from U+FB00 on, which may
# be a whole phrase in one character.
SURELY_FITS = 16
# the list's columns: width (mm), heading, alignment
COLUMNS = (
    (16.0, "#", "R"),
    (62.0, "First name", "L"),
    (62.0, "Last name", "L"),
    (16.0, "Country", "C"),
    (24.0, "Signed on", "R"),
)


class FontsMissing(Exception):
    pass


def find_fonts() -> dict[str, Path]:
    """The font files by family name; FontsMissing names the Debian packages to install."""
    wanted = {"noto": REGULAR, "noto-bold": BOLD, **dict(FALLBACKS)}
    found = {name: FONT_ROOT / relative for name, relative in wanted.items()}
    missing = [str(path) for path in found.values() if not path.is_file()]
    if missing:
        raise FontsMissing(
            f"fonts missing ({', '.join(missing)}): install the Debian packages "
            f"{' '.join(DEBIAN_PACKAGES)} (scripts/bootstrap does)"
        )
    return found


class DeliveryPdf(FPDF):
    def __init__(self, delivery: Delivery) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.delivery = delivery
        self.listing = False  # pages of the list repeat the column headings
        fonts = find_fonts()
        self.add_font("noto", style="", fname=fonts["noto"])
        self.add_font("noto", style="B", fname=fonts["noto-bold"])
        for name, _ in FALLBACKS:
            self.add_font(name, style="", fname=fonts[name])
        self.set_fallback_fonts([name for name, _ in FALLBACKS], exact_match=False)
        self.set_text_shaping(True)
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(auto=True, margin=18)
        self.alias_nb_pages()
        self.set_title(clean_text(delivery.title))
        self.set_creator("signatures export --for-target")

    def header(self) -> None:
        if not self.listing:
            return
        self.set_font("noto", style="B", size=BODY)
        for width, heading, align in COLUMNS:
            self.cell(width, LINE + 1, heading, border="B", align=align)
        self.ln(LINE + 1)
        self.set_font("noto", size=BODY)

    def footer(self) -> None:
        self.set_y(-13)
        self.set_font("noto", size=8)
        self.cell(0, 5, f"Page {self.page_no()} of {{nb}}", align="C")

    def cover(self) -> None:
        d = self.delivery
        self.add_page()
        self.set_font("noto", size=10)
        self.cell(0, 6, "Petition signatures for delivery", new_x="LMARGIN", new_y="NEXT")
        self.ln(2)
        self.set_font("noto", style="B", size=18)
        self.multi_cell(0, 9, clean_text(d.title), new_x="LMARGIN", new_y="NEXT")
        self.ln(3)
        facts = (
            ("To", clean_text(d.target)),
            ("Goal", f"{d.goal:,}"),
            ("Signatures", f"{d.total:,}"),
            ("Exported on", d.exported_on.isoformat()),
        )
        for label, value in facts:
            self.set_font("noto", style="B", size=11)
            self.cell(35, 7, label)
            self.set_font("noto", size=11)
            self.multi_cell(0, 7, value, new_x="LMARGIN", new_y="NEXT")
        self.ln(2)
        self.set_font("noto", size=9)
        self.multi_cell(
            0,
            5,
            "Each signature listed was confirmed by its signer. Only names, country and "
            "the date of signing are included: no email address, postcode or other "
            "contact detail.",
            new_x="LMARGIN",
            new_y="NEXT",
        )
        self.ln(4)
        self.set_font("noto", style="B", size=12)
        self.cell(0, 7, "Signatures by country", new_x="LMARGIN", new_y="NEXT")
        self.set_font("noto", size=9)
        self.multi_cell(0, 5, counts_note(d), new_x="LMARGIN", new_y="NEXT")
        self.ln(2)
        self.set_font("noto", style="B", size=BODY)
        self.cell(16, LINE + 1, "Code", border="B")
        self.cell(80, LINE + 1, "Country", border="B")
        self.cell(34, LINE + 1, "Signatures", border="B", align="R", new_x="LMARGIN", new_y="NEXT")
        self.set_font("noto", size=BODY)
        for code, n in d.by_country.items():
            self.cell(16, LINE, code)
            self.cell(80, LINE, country_name(code))
            self.cell(34, LINE, f"{n:,}", align="R", new_x="LMARGIN", new_y="NEXT")
        self.set_font("noto", style="B", size=BODY)
        self.cell(96, LINE + 1, "Total", border="T")
        self.cell(34, LINE + 1, f"{d.total:,}", border="T", align="R")

    def start_list(self) -> None:
        self.listing = True
        self.add_page()
        self.set_font("noto", size=BODY)  # add_page brings back the cover's last font

    def _fit(self, text: str, width: float) -> tuple[float, list[str]]:
        """The font size and lines that set `text` within `width`: smaller first, then
        wrapped."""
        if len(text) <= SURELY_FITS and max(text, default=" ") < "\ufb00":
            return BODY, [text]  # measuring costs a second shaping of the text
        room = width - 2 * self.c_margin
        natural = self.get_string_width(text)
        if natural <= room:
            return BODY, [text]
        size = max(SMALLEST, BODY * room / natural * 0.98)
        self.set_font_size(size)
        if size > SMALLEST:
            lines = [text]
        else:
            lines = cast(
                "list[str]", self.multi_cell(width, LINE, text, dry_run=True, output="LINES")
            )
        self.set_font_size(BODY)
        return size, lines

    def signer_row(self, number: int, signer: Signer) -> None:
        values = (
            str(number),
            clean_text(signer.first_name),
            clean_text(signer.last_name),
            signer.country,
            signer.signed_on.isoformat(),
        )
        fitted = [
            self._fit(value, width) if index in (1, 2) else (BODY, [value])
            for index, (value, (width, _, _)) in enumerate(zip(values, COLUMNS, strict=True))
        ]
        height = LINE * max(len(lines) for _, lines in fitted)
        if self.will_page_break(height):
            self.add_page()
        y = self.get_y()
        x = self.l_margin
        for (width, _, align), (size, lines) in zip(COLUMNS, fitted, strict=True):
            self.set_font_size(size)
            for n, line in enumerate(lines):
                self.set_xy(x, y + n * LINE)
                self.cell(width, LINE, line, align=align)
            x += width
        self.set_font_size(BODY)
        self.set_xy(self.l_margin, y + height)


async def write_pdf(delivery: Delivery, signers: AsyncIterator[Signer], path: Path) -> Counter[str]:
    """Write the document; returns the counts by country of the signatures listed."""
    pdf = DeliveryPdf(delivery)
    pdf.cover()
    pdf.start_list()
    written: Counter[str] = Counter()
    async for signer in signers:
        written[signer.country] += 1
        pdf.signer_row(written.total(), signer)
    if not written:
        pdf.set_font("noto", size=BODY)
        pdf.cell(0, LINE, "No signature counts yet.")
    await asyncio.to_thread(path.write_bytes, bytes(pdf.output()))
    return written
