-- Silent flags and their review. A signature that trips a flag is stored as usual (pending
-- or confirmed) with the flag's reason, and counts in public only once an operator accepts
-- it; an operator may also invalidate signatures, flagged or not, which takes them out of
-- the count for good.
--
-- Where a signature came from, for the flags and for review: the sender's address only as
-- its prefix (IPv4 /24, IPv6 /48) and a keyed hash of the full address, and the domain of
-- the email. These are personal data like the names and the email, and are cleared with
-- them.

ALTER TABLE signatures
    ADD COLUMN client_prefix cidr,
    ADD COLUMN client_hash bytea CHECK (length(client_hash) = 16),
    ADD COLUMN email_domain text,
    ADD COLUMN flag text CHECK (flag IN (
        'honeypot', 'too_fast', 'disposable_domain', 'prefix_rate', 'domain_rate')),
    -- an operator's decision: 'accepted' (a flagged signature counts once confirmed) or
    -- 'invalidated' (never counts, whatever happens to it later)
    ADD COLUMN review text CHECK (review IN ('accepted', 'invalidated')),
    ADD COLUMN reviewed_at timestamptz;

-- What "counted" means, in one place: confirmed by its owner, and either never flagged or
-- accepted by an operator, and not invalidated. Every count (the persist worker's, a state
-- change's, a review's, reconcile's) reads this column, so they cannot disagree. Adding a
-- stored generated column rewrites the table once, under an exclusive lock.
ALTER TABLE signatures
    ADD COLUMN counted boolean NOT NULL GENERATED ALWAYS AS (
        state = 'confirmed'
        AND CASE WHEN review IS NOT NULL THEN review = 'accepted' ELSE flag IS NULL END
    ) STORED;

-- Flagged signatures, for review: few, so the index costs nothing on the common insert.
CREATE INDEX signatures_flagged ON signatures (campaign, flag) WHERE flag IS NOT NULL;

-- New signatures per campaign, per address prefix or email domain, per minute of their
-- receipt: the persist worker adds each batch's in its transaction and flags those past
-- the configured rate; `signatures status` shows the busiest of the last hour. Rows older
-- than a day are deleted by the persist workers.
CREATE TABLE signing_rates (
    campaign  text NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('prefix', 'domain')),
    key       text NOT NULL,
    minute    timestamptz NOT NULL,
    count     integer NOT NULL CHECK (count > 0),
    PRIMARY KEY (campaign, kind, key, minute)
);
CREATE INDEX signing_rates_by_minute ON signing_rates (minute);
