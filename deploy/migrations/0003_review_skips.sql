-- 0003_review_skips: a moderator's SKIP in the review console hides the image from their queue for a while.
-- Only the console reads and writes it; SKIP is not feedback and is never published.
CREATE TABLE review_skips (
    image_id    text NOT NULL,
    moderator   text NOT NULL,
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, moderator)
);
