-- 0004_model_registry: what the retrainer needs beyond 0001's `models` and `feedback` tables.
--   * models: why a candidate was rejected, when it became champion (rollback walks that history), whether it
--     was rolled back (never rolled back *to* again), and when it was last announced on models.published.
--   * model_events: an append-only audit trail of every registry change (who/what, when, details).
--   * feedback.received_at: when the retrainer stored the row (moderators' labelled_at may be old), so
--     "N new labels since the last retrain" is a count over arrival time.
--   * feedback_majority: the training label per image: the majority across moderators, NULL on a tie.

ALTER TABLE models
    ADD COLUMN reasons         jsonb NOT NULL DEFAULT '[]'::jsonb,  -- gate or operator reasons (strings)
    ADD COLUMN promoted_at     timestamptz,                         -- last time it became champion
    ADD COLUMN rolled_back_at  timestamptz,                         -- set when an operator rolled it back
    ADD COLUMN announced_at    timestamptz;                         -- last announcement on models.published
ALTER TABLE models ADD CONSTRAINT models_trigger_check
    CHECK (trigger IS NULL OR trigger IN ('initial', 'feedback_count', 'schedule', 'manual'));
CREATE INDEX models_promoted_at_idx ON models (promoted_at);

CREATE TABLE model_events (
    id        bigserial PRIMARY KEY,
    version   text NOT NULL,
    event     text NOT NULL,            -- registered, promoted, retired, rejected, rolled_back, announced
    detail    jsonb NOT NULL DEFAULT '{}'::jsonb,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_events_version_idx ON model_events (version, at);

ALTER TABLE feedback ADD COLUMN received_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX feedback_received_at_idx ON feedback (received_at);

CREATE VIEW feedback_majority AS
SELECT image_id,
       count(*) FILTER (WHERE label = 'real') AS n_real,
       count(*) FILTER (WHERE label = 'fake') AS n_fake,
       CASE WHEN count(*) FILTER (WHERE label = 'fake') > count(*) FILTER (WHERE label = 'real') THEN 'fake'
            WHEN count(*) FILTER (WHERE label = 'real') > count(*) FILTER (WHERE label = 'fake') THEN 'real'
       END AS label,                                      -- NULL on a tie: left out of training, counted
       max(received_at) AS received_at
FROM feedback
GROUP BY image_id;
