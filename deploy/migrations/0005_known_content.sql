-- 0005_known_content: signals beside the classifier (ingest/signals.py).
--   * images.pdq / pdq_quality: the PDQ perceptual hash of the decoded pixels (hex of 256 bits) and its quality,
--     written by the scorer, so that a moderator's label can put the image on a known-content list.
--   * verdicts.signals: the verdict's `signals` block (known-content match, provenance, what decided the label).
--   * known_content: the known-fake / known-real lists. Moderation entries (one per labelled image, kept by the
--     retrainer's feedback consumer from the majority label) and imported entries (one per hash, from an
--     operator's CSV). Removal is `active = false`, never a delete, so every scorer's index converges on the
--     table whatever order it sees updates in.

ALTER TABLE images
    ADD COLUMN pdq          text CHECK (pdq IS NULL OR pdq ~ '^[0-9a-f]{64}$'),
    ADD COLUMN pdq_quality  smallint CHECK (pdq_quality IS NULL OR pdq_quality BETWEEN 0 AND 100);

ALTER TABLE verdicts ADD COLUMN signals jsonb;

CREATE TABLE known_content (
    id          bigserial PRIMARY KEY,
    pdq         text NOT NULL CHECK (pdq ~ '^[0-9a-f]{64}$'),
    label       text NOT NULL CHECK (label IN ('real', 'fake')),
    active      boolean NOT NULL DEFAULT true,
    source      text NOT NULL CHECK (source IN ('moderation', 'import')),
    image_id    text,                               -- the labelled image (moderation entries)
    moderators  integer NOT NULL DEFAULT 0,         -- moderators agreeing with `label` (0 for imports)
    note        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((source = 'moderation') = (image_id IS NOT NULL))
);
CREATE UNIQUE INDEX known_content_image_idx ON known_content (image_id) WHERE source = 'moderation';
CREATE UNIQUE INDEX known_content_import_idx ON known_content (pdq) WHERE source = 'import';
