-- The foreign keys from signatures and duplicate_submissions to campaigns cost a
-- row-lock check on the campaign for every inserted row: about 3 µs of database CPU per
-- signature, measured here, a sixth of the insert. The persist transaction already reads
-- the campaign before writing, and campaigns are closed, never deleted: that is now
-- enforced here instead, once, on the table that changes rarely.

ALTER TABLE signatures DROP CONSTRAINT signatures_campaign_fkey;
ALTER TABLE duplicate_submissions DROP CONSTRAINT duplicate_submissions_campaign_fkey;

CREATE FUNCTION campaigns_are_never_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'campaigns are closed, never deleted' USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER campaigns_are_never_deleted
BEFORE DELETE ON campaigns
FOR EACH ROW EXECUTE FUNCTION campaigns_are_never_deleted();

CREATE TRIGGER campaigns_are_never_truncated
BEFORE TRUNCATE ON campaigns
FOR EACH STATEMENT EXECUTE FUNCTION campaigns_are_never_deleted();
