"""The petition page in headless Chromium (Debian's package), driven by Playwright.

Screenshots at desktop and phone widths are written to `test-artifacts/`.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import async_playwright, expect

from runtime.campaigns import create_campaign
from runtime.settings import Settings
from tests.helpers import CAMPAIGN
from tests.pipeline import running_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


async def test_a_person_signs_and_an_open_page_counts_them_live(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await create_campaign(pool, CAMPAIGN)
    async with running_pipeline(settings) as api, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            watcher = await browser.new_page(
                viewport={"width": 1280, "height": 900}, locale="it-IT"
            )
            await watcher.goto(f"{api}/campaigns/{CAMPAIGN.slug}")
            assert await watcher.title() == "Cecenia — firma la petizione"
            assert await watcher.locator("h1").text_content() == "Cecenia"
            assert await watcher.locator(".target").text_content() == "A: Autorità federali russe"
            assert await watcher.locator(".goal").text_content() == "Obiettivo 200.000 firme"
            assert await watcher.locator("#count").text_content() == "0"
            await watcher.locator("#live").wait_for(state="visible", timeout=15_000)
            await watcher.screenshot(path=ARTIFACTS / "page-desktop-it.png", full_page=True)

            phone = await browser.new_page(
                viewport={"width": 390, "height": 844}, locale="en-GB", is_mobile=True
            )
            await phone.goto(f"{api}/campaigns/{CAMPAIGN.slug}")
            assert await phone.title() == "Cecenia — sign the petition"
            assert await phone.locator(".goal").text_content() == "Goal: 200,000 signatures"
            assert await phone.locator(".target").text_content() == "To: Autorità federali russe"
            await phone.screenshot(path=ARTIFACTS / "page-phone-en.png", full_page=True)

            # as a person would: by the labels, then Enter to submit
            await phone.get_by_label("First name").fill("<b>Anna</b>")
            await phone.get_by_label("Last name").fill("Müller")
            await phone.get_by_label("Email", exact=True).fill("anna.mueller.browser@example.org")
            await phone.get_by_label("Country", exact=True).select_option("DE")
            await phone.get_by_label("Keep me updated about this campaign").check()
            await phone.get_by_label("Email", exact=True).press("Enter")
            thanks = phone.locator("main.thanks h1")
            await thanks.wait_for(timeout=15_000)
            assert await thanks.text_content() == "Thank you, <b>Anna</b>!"  # text, not markup
            assert await phone.locator("main.thanks h1 b").count() == 0
            await phone.screenshot(path=ARTIFACTS / "thanks-phone-en.png", full_page=True)

            # the page opened before the signature counts it without a reload
            await expect(watcher.locator("#count")).to_have_text("1", timeout=30_000)
            assert await watcher.locator("#countries li").first.text_content() == "Germania 1"
            await watcher.screenshot(path=ARTIFACTS / "page-desktop-it-live.png", full_page=True)
        finally:
            await browser.close()
