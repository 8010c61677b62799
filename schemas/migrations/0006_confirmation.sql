-- Double opt-in. On a campaign whose `confirmation` is 'required' a new signature is
-- stored 'pending' and counts in public only once its owner confirms it by email.
-- Campaigns that exist already keep counting as they did ('off'); new ones require it.

ALTER TABLE campaigns
    ADD COLUMN confirmation text NOT NULL DEFAULT 'off'
        CHECK (confirmation IN ('required', 'off'));
ALTER TABLE campaigns ALTER COLUMN confirmation SET DEFAULT 'required';

-- pending: waiting for its owner; confirmed: counted; removed: its owner said "this wasn't
-- me" (names and email cleared, no dedupe key: the person may still sign); undeliverable:
-- the confirmation email was refused for good. Rows already stored were counted: confirmed.
ALTER TABLE signatures
    ADD COLUMN state text NOT NULL DEFAULT 'confirmed'
        CHECK (state IN ('pending', 'confirmed', 'removed', 'undeliverable')),
    ADD COLUMN state_changed_at timestamptz,
    ADD COLUMN emails_sent smallint NOT NULL DEFAULT 0,
    ALTER COLUMN email_hash DROP NOT NULL;

-- Signatures still waiting, for reminders.
CREATE INDEX signatures_pending ON signatures (persisted_at) WHERE state = 'pending';

-- `total` and the breakdowns count what is public: confirmed signatures. What is pending
-- is counted here for operators, never published.
ALTER TABLE campaign_totals ADD COLUMN pending bigint NOT NULL DEFAULT 0 CHECK (pending >= 0);

-- Links sent by email. Only a SHA-256 of each token is kept; each is bound to one
-- signature of one campaign, expires, and is used once.
CREATE TABLE confirmation_tokens (
    token_hash     bytea PRIMARY KEY,
    submission_id  uuid NOT NULL,
    campaign       text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz
);
CREATE INDEX confirmation_tokens_by_signature ON confirmation_tokens (submission_id);

-- Emails to send, each once whatever is redelivered: keyed by the submission that asked
-- for it. 'confirm' for a new pending signature (prompted by itself), 'resend' when the
-- same person signs again while pending (prompted by the repeat), 'reminder' once after a
-- while. No address here: the sender reads it from `signatures` when it sends.
CREATE TABLE mail_outbox (
    prompted_by    uuid NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('confirm', 'resend', 'reminder')),
    submission_id  uuid NOT NULL,
    campaign       text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    due_at         timestamptz NOT NULL DEFAULT now(),
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text,
    outcome        text CHECK (outcome IN ('sent', 'skipped', 'undeliverable', 'gave_up')),
    finished_at    timestamptz,
    PRIMARY KEY (prompted_by, kind)
);
CREATE INDEX mail_outbox_due ON mail_outbox (due_at) WHERE finished_at IS NULL;
