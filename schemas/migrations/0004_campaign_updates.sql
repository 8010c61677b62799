-- Dated updates of a campaign ("Consegnate 150.000 firme all'ambasciata"), shown on its page.
CREATE TABLE campaign_updates (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign    text NOT NULL REFERENCES campaigns (slug),
    posted_on   date NOT NULL,
    title       text NOT NULL,
    body        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaign_updates_by_campaign ON campaign_updates (campaign, posted_on DESC);
