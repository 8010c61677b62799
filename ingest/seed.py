"""The campaign the demo runs: facts from the seed petition, wording our own."""

from __future__ import annotations

import contextlib
from datetime import date

import asyncpg

from runtime.campaigns import CampaignExists, create_campaign, post_update
from schemas.campaign import NewCampaign, NewCampaignUpdate

SEED_CAMPAIGN = NewCampaign(
    slug="cecenia",
    title="Cecenia: fermate gli arresti e le uccisioni di uomini gay",
    target="Autorità federali russe",
    goal=200_000,
    description=(
        "Più di 100 uomini sono stati arrestati in Cecenia perché sospettati di essere gay; "
        "almeno tre sono stati uccisi. Chiediamo alle autorità federali russe un'indagine "
        "immediata e giustizia per i responsabili di arresti, torture e uccisioni."
    ),
)

SEED_UPDATES = [
    NewCampaignUpdate(
        posted_on=date(2017, 5, 5),
        title="Aperta un'indagine federale",
        body=(
            "Dopo la pressione internazionale, le autorità russe hanno aperto un'indagine a "
            "livello federale. Ora vigiliamo perché sia condotta davvero."
        ),
    ),
    NewCampaignUpdate(
        posted_on=date(2017, 5, 11),
        title="Fermati a Mosca mentre consegnavano le firme",
        body=(
            "Un membro del nostro staff e attivisti russi nostri partner sono stati fermati "
            "dalla polizia a Mosca mentre cercavano di consegnare le vostre firme."
        ),
    ),
    NewCampaignUpdate(
        posted_on=date(2017, 5, 12),
        title="Rilasciati i cinque attivisti",
        body=(
            "I cinque attivisti fermati a Mosca sono stati rilasciati; il processo è fissato "
            "per il 29 maggio. Una raccolta fondi d'emergenza copre multe e spese legali."
        ),
    ),
]


async def ensure_seed_campaign(pool: asyncpg.Pool) -> None:
    """The demo campaign and its dated updates, created once."""
    with contextlib.suppress(CampaignExists):
        await create_campaign(pool, SEED_CAMPAIGN)
        for update in SEED_UPDATES:
            await post_update(pool, SEED_CAMPAIGN.slug, update)
