-- Signers' names, email and postcode encrypted at rest (runtime/pii.py).
--
-- Each campaign has data keys (AES-256-GCM), one of them current; they are stored here
-- only wrapped (encrypted) by the master key, which never enters the database
-- (SIGNATURES_MASTER_KEY, or under `up` a key file in the state directory). A row keeps
-- its first name, last name, email and postcode as one AES-GCM blob (`pii`: nonce,
-- ciphertext and tag) under the data key `key_id`, bound to its submission id and campaign.
-- `signatures keys rotate` rewraps the data keys under a new master key and, with
-- --reencrypt, moves rows to a new data key; rows of several key versions stay readable.

CREATE TABLE data_keys (
    id                  integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign            text NOT NULL REFERENCES campaigns (slug),
    version             integer NOT NULL CHECK (version > 0),
    -- nonce and AES-GCM of the 32-byte data key under the master key
    wrapped             bytea NOT NULL CHECK (length(wrapped) = 12 + 32 + 16),
    -- which master key wrapped it (a keyed fingerprint, not the key)
    master_fingerprint  text NOT NULL,
    current             boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    rewrapped_at        timestamptz,
    UNIQUE (campaign, version)
);
-- One current key per campaign: new rows are encrypted with it.
CREATE UNIQUE INDEX data_keys_current ON data_keys (campaign) WHERE current;

-- The plaintext columns stay only for rows stored before this migration, until
-- `signatures keys encrypt` (run by `up` at start, and by `keys rotate --reencrypt`)
-- encrypts them and empties them. New rows never carry them: the persist worker's staging
-- table has no such columns, and a row with a blob may not keep any plaintext.
-- No foreign key from signatures to data_keys: its per-row check would cost the insert
-- path; a data key is deleted only once no row uses it (runtime/pii.py).
ALTER TABLE signatures
    ADD COLUMN key_id integer,
    ADD COLUMN pii bytea,
    ALTER COLUMN first_name DROP NOT NULL,
    ALTER COLUMN last_name DROP NOT NULL,
    ALTER COLUMN email DROP NOT NULL,
    ADD CONSTRAINT signatures_pii_encrypted CHECK (
        (pii IS NULL) = (key_id IS NULL)
        AND (pii IS NULL OR num_nonnulls(first_name, last_name, email, postcode) = 0)
    );
