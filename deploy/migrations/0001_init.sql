-- 0001_init: the pipeline's tables (DESIGN.md, "PostgreSQL").
-- Every writer upserts on the primary key, so a replayed record changes nothing.
-- No foreign keys between pipeline tables: each consumer writes its own table in whatever order records arrive.

CREATE TABLE images (
    id            text PRIMARY KEY,                 -- image_id: sha256 of the bytes when the intake stored them
    ref           text,                             -- s3://bucket/key; NULL when the image travelled inline
    sha256        text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    source        text,                             -- tenant / platform
    submitted_at  timestamptz NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE verdicts (
    image_id         text NOT NULL,
    model_version    text NOT NULL,
    p_fake           double precision NOT NULL CHECK (p_fake >= 0 AND p_fake <= 1),
    label            text NOT NULL CHECK (label IN ('real', 'fake', 'uncertain')),
    threshold        double precision NOT NULL,
    original_size    integer[] CHECK (original_size IS NULL OR cardinality(original_size) = 2), -- {width, height}
    original_format  text,
    submitted_at     timestamptz,
    scored_at        timestamptz NOT NULL,
    timings          jsonb NOT NULL DEFAULT '{}'::jsonb,  -- per-stage seconds: fetch, decode, infer, ...
    PRIMARY KEY (image_id, model_version)
);
CREATE INDEX verdicts_scored_at_idx ON verdicts (scored_at);

CREATE TABLE explanations (
    image_id       text NOT NULL,
    model_version  text NOT NULL,
    method         text NOT NULL,                   -- e.g. gradcam
    keys           jsonb NOT NULL,                  -- object keys in bucket `explanations`: map, overlay, sidecar
    evidence       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model_version, method)
);

CREATE TABLE feedback (
    image_id     text NOT NULL,
    moderator    text NOT NULL,
    label        text NOT NULL CHECK (label IN ('real', 'fake')),
    note         text NOT NULL DEFAULT '',
    labelled_at  timestamptz NOT NULL,
    PRIMARY KEY (image_id, moderator)
);
CREATE INDEX feedback_labelled_at_idx ON feedback (labelled_at);

CREATE TABLE models (
    version     text PRIMARY KEY,
    parent      text,                               -- version this one was fine-tuned from; NULL for a base model
    sha256      text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    object_key  text NOT NULL,                      -- key in bucket `models`
    metrics     jsonb NOT NULL DEFAULT '{}'::jsonb,
    status      text NOT NULL DEFAULT 'candidate'
                CHECK (status IN ('candidate', 'champion', 'rejected', 'retired')),
    trigger     text,                               -- what started the training run
    created_at  timestamptz NOT NULL DEFAULT now(),
    data        jsonb NOT NULL DEFAULT '{}'::jsonb  -- training data description (hash, counts)
);
-- At most one champion: promotion demotes the old one first, in the same transaction.
CREATE UNIQUE INDEX models_one_champion_idx ON models ((true)) WHERE status = 'champion';

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    key_hash    text NOT NULL UNIQUE,               -- a hash of the secret, never the secret
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE moderators (
    name           text PRIMARY KEY,
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
