"""Images with provenance metadata, built in memory for the tests (nothing downloaded or committed).

* ``declared_ai_cases()``: images whose metadata declares a generator, with the finding kind and a piece of
  the detail that ``read_provenance`` must report (``declared_ai_fixtures()``: the bytes only);
* ``camera_fixtures()``: camera- and editor-made images that must *not* be declared AI;
* ``c2pa_fixture(...)``: a C2PA-signed JPEG/PNG/WebP, signed by a throwaway CA's leaf (c2pa refuses
  self-signed leaves); ``signing_ca().ca_pem`` is the anchor a test registers to get "Trusted";
  ``tamper_pixels(...)`` changes the pixels after signing (hash mismatch);
* hostile inputs: ``png_with_chunks``, ``text_bomb``, ``many_text_chunks``, ``huge_xmp_png``, ...

Builders are deterministic except the CA (one per process, cached).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image

from ingest.signals import FindingKind
from tests.imagegen import noise, png_chunk, save

DST = "http://cv.iptc.org/newscodes/digitalsourcetype/"
IPTC_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
A1111_PARAMETERS = (
    "a photo of a lighthouse at dusk\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model: v1-5-pruned"
)
COMFY_PROMPT = json.dumps(
    {
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "cfg": 8.0}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse"}},
    }
)
COMFY_WORKFLOW = json.dumps({"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [[1]]})
NOVELAI_COMMENT = json.dumps({"prompt": "a lighthouse", "steps": 28, "sampler": "k_euler", "uc": "lowres"})


# -- containers ---------------------------------------------------------------------------------


def base_png(w: int = 16, h: int = 16, seed: int = 0) -> bytes:
    return save(noise(w, h, seed=seed), "PNG")


def base_jpeg(w: int = 32, h: int = 32, seed: int = 0, **kw: object) -> bytes:
    return save(noise(w, h, seed=seed), "JPEG", quality=80, **kw)


def png_with_chunks(chunks: list[bytes], *, after_idat: bool = False, png: bytes | None = None) -> bytes:
    """``png`` (default: a 16x16 noise PNG) with raw ``chunks`` inserted after IHDR or before IEND."""
    png = png or base_png()
    at = len(png) - 12 if after_idat else 8 + 25  # IEND is the last 12 bytes; IHDR the first 25 after sig
    return png[:at] + b"".join(chunks) + png[at:]


def text_chunk(key: str, text: str) -> bytes:
    return png_chunk(b"tEXt", key.encode("latin-1") + b"\x00" + text.encode("latin-1"))


def ztxt_chunk(key: str, data: bytes) -> bytes:
    return png_chunk(b"zTXt", key.encode("latin-1") + b"\x00\x00" + zlib.compress(data, 9))


def itxt_chunk(key: str, text: str, *, compressed: bool = False) -> bytes:
    body = text.encode("utf-8")
    body = zlib.compress(body) if compressed else body
    head = key.encode("latin-1") + b"\x00" + bytes([int(compressed), 0]) + b"\x00\x00"
    return png_chunk(b"iTXt", head + body)


def jpeg_segment(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg_with_segments(segments: list[bytes], jpeg: bytes | None = None) -> bytes:
    jpeg = jpeg or base_jpeg()
    return jpeg[:2] + b"".join(segments) + jpeg[2:]


def xmp_packet(inner: str, *, description_attrs: str = "") -> bytes:
    """An XMP packet whose rdf:Description carries ``description_attrs`` and contains ``inner``."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="{IPTC_NS}" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        f"{description_attrs}>{inner}</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    ).encode()


def dst_attribute(code: str) -> bytes:
    return xmp_packet("", description_attrs=f'Iptc4xmpExt:DigitalSourceType="{DST}{code}"')


def dst_element(code: str) -> bytes:
    return xmp_packet(f"<Iptc4xmpExt:DigitalSourceType>{DST}{code}</Iptc4xmpExt:DigitalSourceType>")


def dst_resource(code: str) -> bytes:
    return xmp_packet(f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{DST}{code}"/>')


def creator_tool(tool: str) -> bytes:
    return xmp_packet("", description_attrs=f'xmp:CreatorTool="{tool}"')


def jpeg_with_xmp(packet: bytes) -> bytes:
    return jpeg_with_segments([jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + packet)])


def exif_block(
    *,
    software: str | None = None,
    make: str | None = None,
    model: str | None = None,
    user_comment: bytes | None = None,
) -> bytes:
    exif = Image.Exif()
    for tag, value in ((0x010F, make), (0x0110, model), (0x0131, software)):
        if value is not None:
            exif[tag] = value
    if user_comment is not None:
        exif.get_ifd(0x8769)[0x9286] = user_comment
    return exif.tobytes()


def jpeg_with_exif(
    *,
    software: str | None = None,
    make: str | None = None,
    model: str | None = None,
    user_comment: bytes | None = None,
) -> bytes:
    block = exif_block(software=software, make=make, model=model, user_comment=user_comment)
    return base_jpeg(exif=block)


def unicode_comment(text: str, byteorder: str = "be") -> bytes:
    """UserComment as piexif (Automatic1111) writes it: "UNICODE\\0" then UTF-16."""
    return b"UNICODE\x00" + text.encode(f"utf-16-{byteorder}")


def webp_with(*, exif: bytes | None = None, xmp: bytes | None = None) -> bytes:
    kw: dict[str, bytes] = {}
    if exif is not None:
        kw["exif"] = exif
    if xmp is not None:
        kw["xmp"] = xmp
    return save(noise(16, 16), "WEBP", **kw)


# -- C2PA ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningCa:
    ca_pem: str  # register this as the trust anchor
    chain_pem: bytes  # leaf then CA, what the signer embeds
    key_pem: bytes  # the leaf's private key
    leaf_cn: str


@lru_cache(maxsize=1)
def signing_ca() -> SigningCa:
    """The CA that signs every C2PA fixture: one per process (``new_ca()`` costs a few milliseconds)."""
    return new_ca()


def new_ca() -> SigningCa:
    """A throwaway CA and a leaf it issued (ES256, P-256): digitalSignature + emailProtection EKU,
    which c2pa accepts for claim signing (it refuses self-signed leaves)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Org"),
            ]
        )

    def usage(**on: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    def builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("Provenance Test CA", name("Provenance Test CA"), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        builder("Provenance Test Signer", ca.subject, leaf_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return SigningCa(
        ca_pem=ca.public_bytes(pem).decode(),
        chain_pem=leaf.public_bytes(pem) + ca.public_bytes(pem),
        key_pem=leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        leaf_cn="Provenance Test Signer",
    )


_MIME = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


def c2pa_fixture(
    fmt: str = "jpeg",
    source_type: str = "trainedAlgorithmicMedia",
    generator: str = "Provenance Test Generator",
    remote_url: str | None = None,
) -> bytes:
    """A 32x32 image of ``fmt`` signed with a c2pa.created action of ``source_type``; with
    ``remote_url`` the store is not embedded, only referenced (in XMP) at that URL."""
    import c2pa

    ca = signing_ca()
    src = save(noise(32, 32, seed=7), fmt.upper())
    manifest = {
        "claim_generator_info": [{"name": generator, "version": "1.0"}],
        "title": f"fixture.{fmt}",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": DST + source_type}]},
            }
        ],
    }
    info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, ca.chain_pem, ca.key_pem, None)
    out = io.BytesIO()
    with (
        c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}}) as ctx,
        c2pa.Signer.from_info(info) as signer,
        c2pa.Builder(manifest, context=ctx) as builder,
    ):
        if remote_url is not None:
            builder.set_no_embed()
            builder.set_remote_url(remote_url)
        builder.sign(signer, _MIME[fmt], io.BytesIO(src), out)
    return out.getvalue()


def tamper_pixels(data: bytes) -> bytes:
    """``data`` (a signed JPEG or PNG) with one bit of its pixel data flipped: the hash no longer matches."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        i = data.index(b"IDAT") - 4
        length = struct.unpack_from(">I", data, i)[0]
        out[i + 8 + length // 2] ^= 0x01
        struct.pack_into(">I", out, i + 8 + length, zlib.crc32(bytes(out[i + 4 : i + 8 + length])))
        return bytes(out)
    p = len(out) - 8  # inside the entropy-coded scan, clear of 0xFF bytes (byte stuffing, markers)
    while 0xFF in (out[p - 1], out[p], out[p] ^ 0x01):
        p -= 1
    out[p] ^= 0x01
    return bytes(out)


# -- tables -------------------------------------------------------------------------------------


def declared_ai_cases() -> dict[str, tuple[Callable[[], bytes], FindingKind, str]]:
    """name -> (builder, the kind of the declared_ai finding, a piece of its detail)."""
    ai = "trainedAlgorithmicMedia"
    return {
        "png tEXt parameters (A1111)": (
            lambda: png_with_chunks([text_chunk("parameters", A1111_PARAMETERS)]),
            "png_text",
            "Automatic1111",
        ),
        "png iTXt prompt (ComfyUI)": (
            lambda: png_with_chunks([itxt_chunk("prompt", COMFY_PROMPT)]),
            "png_text",
            "ComfyUI prompt",
        ),
        "png zTXt workflow (ComfyUI) after IDAT": (
            lambda: png_with_chunks([ztxt_chunk("workflow", COMFY_WORKFLOW.encode())], after_idat=True),
            "png_text",
            "ComfyUI workflow",
        ),
        "png compressed iTXt workflow (ComfyUI)": (
            lambda: png_with_chunks([itxt_chunk("workflow", COMFY_WORKFLOW, compressed=True)]),
            "png_text",
            "ComfyUI workflow",
        ),
        "png tEXt Dream (InvokeAI)": (
            lambda: png_with_chunks([text_chunk("Dream", '"a lighthouse" -s 50 -S 42 -W 512 -H 512 -C 7.5')]),
            "png_text",
            "InvokeAI",
        ),
        "png tEXt sd-metadata (InvokeAI)": (
            lambda: png_with_chunks(
                [text_chunk("sd-metadata", '{"app_id": "invoke-ai/InvokeAI", "image": {}}')]
            ),
            "png_text",
            "InvokeAI",
        ),
        "png NovelAI Software + Comment": (
            lambda: png_with_chunks(
                [text_chunk("Software", "NovelAI"), text_chunk("Comment", NOVELAI_COMMENT)]
            ),
            "png_text",
            "NovelAI",
        ),
        "png iTXt XMP DigitalSourceType": (
            lambda: png_with_chunks([itxt_chunk("XML:com.adobe.xmp", dst_element(ai).decode())]),
            "iptc_xmp",
            f"DigitalSourceType {ai}",
        ),
        "jpeg XMP DigitalSourceType attribute": (
            lambda: jpeg_with_xmp(dst_attribute(ai)),
            "iptc_xmp",
            f"IPTC DigitalSourceType {ai}",
        ),
        "jpeg XMP DigitalSourceType element": (
            lambda: jpeg_with_xmp(dst_element("compositeWithTrainedAlgorithmicMedia")),
            "iptc_xmp",
            "compositeWithTrainedAlgorithmicMedia",
        ),
        "jpeg XMP DigitalSourceType rdf:resource": (
            lambda: jpeg_with_xmp(dst_resource("algorithmicMedia")),
            "iptc_xmp",
            "IPTC DigitalSourceType algorithmicMedia",
        ),
        "jpeg XMP CreatorTool Midjourney": (
            lambda: jpeg_with_xmp(creator_tool("Midjourney v6")),
            "iptc_xmp",
            "names Midjourney",
        ),
        "jpeg EXIF Software Adobe Firefly": (
            lambda: jpeg_with_exif(software="Adobe Firefly"),
            "exif_software",
            "Adobe Firefly",
        ),
        "jpeg EXIF UserComment A1111 (UTF-16BE)": (
            lambda: jpeg_with_exif(user_comment=unicode_comment(A1111_PARAMETERS)),
            "exif_comment",
            "Automatic1111",
        ),
        "jpeg EXIF UserComment A1111 (ASCII)": (
            lambda: jpeg_with_exif(user_comment=b"ASCII\x00\x00\x00" + A1111_PARAMETERS.encode()),
            "exif_comment",
            "Automatic1111",
        ),
        "webp XMP DigitalSourceType": (
            lambda: webp_with(xmp=dst_attribute(ai)),
            "iptc_xmp",
            f"DigitalSourceType {ai}",
        ),
        "webp EXIF Software DALL-E": (
            lambda: webp_with(exif=exif_block(software="DALL-E 3")),
            "exif_software",
            "DALL-E 3",
        ),
        "c2pa jpeg trainedAlgorithmicMedia": (lambda: c2pa_fixture("jpeg"), "c2pa", f"C2PA: {ai}"),
        "c2pa png trainedAlgorithmicMedia": (lambda: c2pa_fixture("png"), "c2pa", f"C2PA: {ai}"),
    }


def declared_ai_fixtures() -> dict[str, bytes]:
    return {name: make() for name, (make, _, _) in declared_ai_cases().items()}


def camera_fixtures() -> dict[str, bytes]:
    """Camera- and editor-made images: metadata present, no generator declared."""
    return {
        "canon": jpeg_with_exif(make="Canon", model="Canon EOS R5", software="Firmware Version 1.8.1"),
        "iphone 15": jpeg_with_exif(make="Apple", model="iPhone 15", software="17.1"),
        "lightroom": jpeg_with_exif(
            make="Nikon", software="Adobe Photoshop Lightroom Classic 13.0 (Windows)"
        ),
        "gimp": jpeg_with_exif(software="GIMP 2.10.36"),
        "photoshop xmp": jpeg_with_xmp(creator_tool("Adobe Photoshop 25.0 (Macintosh)")),
        "xmp digitalCapture": jpeg_with_xmp(dst_resource("digitalCapture")),
        "pixel": jpeg_with_exif(make="Google", model="Pixel 8", software="HDR+ 1.0.540104767zd"),
        "png gimp text": png_with_chunks(
            [text_chunk("Software", "GIMP 2.10"), text_chunk("Comment", "holiday")]
        ),
        "png plain prompt text": png_with_chunks([text_chunk("prompt", "Write a caption for this photo")]),
        "webp camera exif": webp_with(exif=exif_block(make="Canon", software="Digital Photo Professional")),
        "c2pa digitalCapture": c2pa_fixture("jpeg", "digitalCapture", "Leica M11 Firmware 2.0"),
    }
