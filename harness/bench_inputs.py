"""What the pipeline benchmarks publish: the images (generated or from a dataset), stored once in the
``images`` bucket, and the ``images.submitted`` records that carry them by reference or inline. Shared by
``harness.pipeline_bench``, ``harness.soak`` and the chaos run."""

from __future__ import annotations

import base64
import hashlib
from concurrent.futures import ThreadPoolExecutor

from harness.demo_samples import generated_images
from ingest.contracts import ImageSubmitted, utcnow
from ingest.errors import PermanentError
from ingest.storage import S3Store
from scorer.offline import iter_sources


def prepare_images(n: int, data: str | None, seed: int) -> tuple[list[bytes], str]:
    if data:
        from ingest.decode import DecodeLimits

        imgs = []
        for src in iter_sources([data], DecodeLimits()):
            if src.refused:  # not an image by its name, or too large: nothing to publish
                continue
            imgs.append(src.data)
            if len(imgs) >= n:
                break
        if imgs:
            return imgs, f"first {len(imgs)} images of {data}"
    return generated_images(n, seed), f"{n} generated 32x32 JPEGs"


def upload(store: S3Store, images: list[bytes]) -> list[str]:
    """Store ``images`` under their sha256 (the key names the content, so an existing key is skipped).

    Overwriting the same objects on every run made MinIO move the old versions to its trash and purge
    them in the background, which took CPU from the next runs' measurements."""
    keys = [hashlib.sha256(b).hexdigest() for b in images]

    def put_missing(key: str, data: bytes) -> None:
        try:
            store.stat("images", key)
        except PermanentError:
            store.put("images", key, data, "image/jpeg")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kb: put_missing(*kb), zip(keys, images, strict=True)))
    return keys


def reference_message(
    image_id: str, key: str, source: str = "bench", bucket: str = "images"
) -> ImageSubmitted:
    """The ``images.submitted`` record a platform sends for an object it already stored (submitted now)."""
    return ImageSubmitted(image_id=image_id, ref=f"s3://{bucket}/{key}", submitted_at=utcnow(), source=source)


def inline_message(image_id: str, data: bytes, source: str = "bench") -> ImageSubmitted:
    """The record for an image sent in the message itself (no object store on the way in)."""
    return ImageSubmitted(
        image_id=image_id, inline=base64.b64encode(data).decode(), submitted_at=utcnow(), source=source
    )
