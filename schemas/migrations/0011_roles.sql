-- Least privilege: one group role per kind of service, granted exactly what its code runs.
--
--   signatures_api       the HTTP API: campaigns, totals and partner keys to answer and
--                        sign; the confirmation and "forget me" pages. It never reads a
--                        signer's name, email, postcode, their encrypted blob, any hash or
--                        network prefix of theirs, the data keys, or a forget request's
--                        address (which it only writes).
--   signatures_worker    persist, counter, mail worker and retention: the signatures with
--                        their encrypted blob and the data keys (the mail worker decrypts the
--                        address it sends to); campaigns and partner keys read-only.
--   signatures_operator  the operators' commands (status, reconcile, dlq, export, review,
--                        forget, keys, campaigns, partners): every row, no schema change.
--
-- The roles cannot log in: login users are made members of one of them (`signatures
-- migrate` creates the users named in SIGNATURES_{API,WORKER,OPERATOR}_DATABASE_URL).
-- Roles are cluster-wide, so they are created only when missing; the grants are of this
-- database. `migrate` keeps running as the owner. A later migration that creates a table
-- grants on it itself: nothing is granted by default.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'signatures_api') THEN
        CREATE ROLE signatures_api NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'signatures_worker') THEN
        CREATE ROLE signatures_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'signatures_operator') THEN
        CREATE ROLE signatures_operator NOLOGIN;
    END IF;
    -- CONNECT and TEMP (every pool's connection makes the persist worker's COPY staging
    -- table, runtime/db.py) on this database, whatever its name.
    EXECUTE format(
        'GRANT CONNECT, TEMPORARY ON DATABASE %I '
        'TO signatures_api, signatures_worker, signatures_operator',
        current_database()
    );
END
$$;

-- Before PostgreSQL 15 everybody could create objects in `public`.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO signatures_api, signatures_worker, signatures_operator;

-- ---------------------------------------------------------------------------------------
-- The API
-- ---------------------------------------------------------------------------------------
GRANT SELECT ON schema_migrations, campaigns, campaign_totals, campaign_breakdown,
    campaign_updates TO signatures_api;
-- the state changes of the confirmation page move the totals (runtime/counts.py)
GRANT UPDATE (total, pending, duplicates, version, updated_at) ON campaign_totals
    TO signatures_api;
GRANT INSERT, UPDATE (count) ON campaign_breakdown TO signatures_api;
-- partner keys: their hashes are read to authenticate a batch, their last use recorded
GRANT SELECT ON partners TO signatures_api;
GRANT UPDATE (last_used_at) ON partners TO signatures_api;
-- signatures: the state, never who signed (no name, email, postcode, blob, hash, address
-- prefix or domain); confirming changes the state (runtime/signature_states.py)
GRANT SELECT (id, submission_id, campaign, country, consent, language, source, submitted_at,
    received_at, persisted_at, state, state_changed_at, emails_sent, vouched_by, flag,
    review, reviewed_at, counted, key_id) ON signatures TO signatures_api;
GRANT UPDATE (state, state_changed_at) ON signatures TO signatures_api;
-- the links' tokens (runtime/confirmation.py) and what an erasure removes with the
-- signatures (runtime/erasure.py)
GRANT SELECT, DELETE ON confirmation_tokens TO signatures_api;
GRANT UPDATE (used_at) ON confirmation_tokens TO signatures_api;
GRANT SELECT (submission_id, campaign), DELETE ON mail_outbox TO signatures_api;
-- (INSERT … ON CONFLICT reads the conflicting key: random ids only)
GRANT INSERT, SELECT (submission_id) ON erased_submissions TO signatures_api;
-- forget requests: the address is written, never read back (runtime/erasure_requests.py)
GRANT INSERT (id, email_hash, email, language) ON erasure_requests TO signatures_api;
GRANT SELECT (id, email_hash, requested_at, token_hash, expires_at, used_at)
    ON erasure_requests TO signatures_api;
GRANT UPDATE (used_at) ON erasure_requests TO signatures_api;

-- An erasure from the API's pages finds a person's signatures by the hash of their email,
-- which the API may not read: these functions run as their owner and do only that.
-- The email hash of the signature a confirmation link was sent for (the token's holder).
CREATE FUNCTION confirmation_email_hash(p_token_hash bytea, p_campaign text)
RETURNS bytea
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    SELECT s.email_hash
    FROM confirmation_tokens t
    JOIN signatures s ON s.submission_id = t.submission_id AND s.campaign = t.campaign
    WHERE t.token_hash = p_token_hash AND t.campaign = p_campaign
$$;

-- The suppression of a person, in one campaign or (NULL) in all: when it took effect.
CREATE FUNCTION erase_suppress(p_email_hash bytea, p_campaign text)
RETURNS timestamptz
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    INSERT INTO erasures (email_hash, campaign, erased_at)
    VALUES (p_email_hash, p_campaign, clock_timestamp())
    ON CONFLICT (email_hash, campaign) DO UPDATE SET erased_at = excluded.erased_at
    RETURNING erased_at
$$;

-- Deletes a person's signatures; what each counted, never who it was.
CREATE FUNCTION erase_signatures(p_email_hash bytea, p_campaign text)
RETURNS TABLE (submission_id uuid, campaign text, country text, source text, state text,
               counted boolean)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp
AS $$
    DELETE FROM signatures
    WHERE signatures.submission_id IN (
        SELECT s.submission_id FROM signatures s
        WHERE s.email_hash = p_email_hash AND (p_campaign IS NULL OR s.campaign = p_campaign)
        ORDER BY s.submission_id
        FOR UPDATE
    )
    RETURNING signatures.submission_id, signatures.campaign, signatures.country,
              signatures.source, signatures.state, signatures.counted
$$;

REVOKE ALL ON FUNCTION confirmation_email_hash(bytea, text), erase_suppress(bytea, text),
    erase_signatures(bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION confirmation_email_hash(bytea, text), erase_suppress(bytea, text),
    erase_signatures(bytea, text) TO signatures_api, signatures_operator;

-- ---------------------------------------------------------------------------------------
-- The workers: persist, counter, mail, retention
-- ---------------------------------------------------------------------------------------
GRANT SELECT ON schema_migrations, campaigns, campaign_updates, partners TO signatures_worker;
-- retention marks a campaign anonymised (ops/retention.py)
GRANT UPDATE (anonymised_at) ON campaigns TO signatures_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON signatures, duplicate_submissions, campaign_totals,
    campaign_breakdown, dead_letter_replays, dedupe_key, confirmation_tokens, mail_outbox,
    signing_rates, data_keys, erasures, erased_submissions, erasure_requests
    TO signatures_worker;

-- ---------------------------------------------------------------------------------------
-- The operators
-- ---------------------------------------------------------------------------------------
GRANT SELECT ON schema_migrations TO signatures_operator;
GRANT SELECT, INSERT, UPDATE, DELETE ON campaigns, campaign_totals, campaign_breakdown,
    campaign_updates, partners, signatures, duplicate_submissions, dead_letter_replays,
    dedupe_key, confirmation_tokens, mail_outbox, signing_rates, data_keys, erasures,
    erased_submissions, erasure_requests TO signatures_operator;

-- The identity columns' sequences (signatures, campaign_updates, partners, data_keys).
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public
    TO signatures_api, signatures_worker, signatures_operator;
