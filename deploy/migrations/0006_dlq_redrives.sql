-- 0006_dlq_redrives: which dead letters an operator has put back on their source topic
-- (`python -m ingest dlq redrive`). A dead letter is identified by the record it came from (source topic,
-- partition, offset): a second redrive of the same one is skipped, so no downstream effect is doubled.
CREATE TABLE dlq_redrives (
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    dlq_topic         text NOT NULL,
    dlq_partition     integer NOT NULL,
    dlq_offset        bigint NOT NULL,
    code              text NOT NULL,
    redriven_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_topic, source_partition, source_offset)
);
