"""The campaign the demo runs: facts from the seed petition, wording our own."""

from __future__ import annotations

from schemas.campaign import NewCampaign

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
