-- Erasure on request and retention after a campaign closes.
--
-- `erasures`: people who asked to be forgotten, by the keyed hash of their normalised
-- email (the dedupe key: no address is kept), for one campaign or for all (NULL). A
-- submission of theirs received at or before `erased_at` is never stored again, whatever
-- is replayed or redelivered; one received later is a new signature.
CREATE TABLE erasures (
    email_hash  bytea NOT NULL,
    campaign    text REFERENCES campaigns (slug),  -- NULL: every campaign
    erased_at   timestamptz NOT NULL,
    CONSTRAINT erasures_once UNIQUE NULLS NOT DISTINCT (email_hash, campaign)
);
-- The persist workers keep a copy and read, at every batch, what changed since their last
-- look (runtime/erasure.py, Suppressions).
CREATE INDEX erasures_by_time ON erasures (erased_at);

-- Submissions of forgotten people: the signatures deleted by an erasure, and the records
-- the persist workers suppressed afterwards (a replay, a redelivery, a dead letter
-- replayed). Only the random submission id and the campaign, so that every consumed
-- record is still accounted for: a row, a duplicate, a dead letter, or erased.
CREATE TABLE erased_submissions (
    submission_id  uuid PRIMARY KEY,
    campaign       text NOT NULL,
    reason         text NOT NULL CHECK (reason IN ('erased', 'suppressed')),
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- Retention: a closed campaign's signatures lose their personal data `retain_days` after
-- it closed (0: as soon as it is closed); `anonymised_at` says when that was done.
ALTER TABLE campaigns
    ADD COLUMN retain_days integer NOT NULL DEFAULT 180 CHECK (retain_days >= 0),
    ADD COLUMN anonymised_at timestamptz;

-- A signer asking to be forgotten (POST /v1/erasure-requests). Every request is stored
-- the same way whether or not the address signed anything, so the answer tells nobody.
-- The mail worker then sends a one-time link to the address if it has signatures (else
-- nothing), and clears the address either way; only the link's press erases.
CREATE TABLE erasure_requests (
    id            uuid PRIMARY KEY,
    email_hash    bytea NOT NULL,
    email         text,  -- until the mail worker has handled the request
    language      text,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    handled_at    timestamptz,
    token_hash    bytea UNIQUE,  -- SHA-256 of the link's token, once one was sent
    expires_at    timestamptz,
    used_at       timestamptz
);
CREATE INDEX erasure_requests_due ON erasure_requests (requested_at) WHERE handled_at IS NULL;
CREATE INDEX erasure_requests_by_person ON erasure_requests (email_hash, requested_at);
