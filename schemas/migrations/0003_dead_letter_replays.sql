-- Dead letters sent back to the input topic by `signatures dlq replay`: each one once,
-- unless the operator asks again.
CREATE TABLE dead_letter_replays (
    topic        text NOT NULL,
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    replays      integer NOT NULL DEFAULT 1,
    replayed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
