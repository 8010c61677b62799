-- Partner organisations that send signatures over HTTP with a key of their own. Only a
-- SHA-256 of each key is kept: the key itself is shown once, when it is created. A name
-- has at most one key in use; revoking it and creating the name again issues a new key
-- (a new row), and the revoked row stays as the record of what was used when.

CREATE TABLE partners (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    key_hash      bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    -- the campaigns the key may sign; NULL: every campaign
    campaigns     text[] CHECK (campaigns IS NULL OR cardinality(campaigns) > 0),
    -- the partner confirms its signers itself: on a campaign that requires confirmation
    -- their signatures count at once, without our email
    confirms      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,  -- written at most about once a minute per API process
    revoked_at    timestamptz
);
CREATE UNIQUE INDEX partners_one_key_in_use ON partners (name) WHERE revoked_at IS NULL;

-- The partner whose word made a signature count without a confirmation email (a
-- confirming partner's signature on a campaign that requires confirmation); NULL otherwise.
-- No default: adding the column rewrites nothing.
ALTER TABLE signatures ADD COLUMN vouched_by text;
