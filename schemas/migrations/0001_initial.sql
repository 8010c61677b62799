-- Campaigns, signatures, duplicates and exact running totals.

CREATE TABLE campaigns (
    slug         text PRIMARY KEY CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    title        text NOT NULL,
    target       text NOT NULL,
    goal         integer NOT NULL CHECK (goal > 0),
    description  text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz
);

-- One row per person per campaign. email_hash is HMAC-SHA256(secret, normalised email).
CREATE TABLE signatures (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    submission_id uuid NOT NULL UNIQUE,
    campaign      text NOT NULL REFERENCES campaigns (slug),
    email_hash    bytea NOT NULL,
    first_name    text NOT NULL,
    last_name     text NOT NULL,
    email         text NOT NULL,
    country       char(2) NOT NULL,
    postcode      text,
    consent       boolean NOT NULL,
    language      text,
    source        text NOT NULL,
    submitted_at  timestamptz NOT NULL,
    received_at   timestamptz,
    persisted_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT signatures_one_per_person UNIQUE (campaign, email_hash)
);

-- Submissions that were the same person signing again: counted, never stored twice.
CREATE TABLE duplicate_submissions (
    submission_id uuid PRIMARY KEY,
    campaign      text NOT NULL REFERENCES campaigns (slug),
    source        text NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);

-- Exact totals, changed in the same transaction as the rows they count.
CREATE TABLE campaign_totals (
    campaign    text PRIMARY KEY REFERENCES campaigns (slug),
    total       bigint NOT NULL DEFAULT 0 CHECK (total >= 0),
    duplicates  bigint NOT NULL DEFAULT 0 CHECK (duplicates >= 0),
    version     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE campaign_breakdown (
    campaign   text NOT NULL REFERENCES campaigns (slug),
    dimension  text NOT NULL CHECK (dimension IN ('country', 'source')),
    key        text NOT NULL,
    count      bigint NOT NULL CHECK (count >= 0),
    PRIMARY KEY (campaign, dimension, key)
);

-- Which dedupe secret this database's hashes were made with (a fingerprint, not the key).
CREATE TABLE dedupe_key (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
