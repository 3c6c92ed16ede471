"""Security promises that need no stack; each test fails if its promise breaks.

Where each promise is checked (this module unless named):

* bucket allow-list, no SSRF: ``test_fetch.py`` (bucket allow-list, key escapes, other schemes, loopback,
  link-local, private, 6to4/Teredo, every DNS answer, credentials in URLs), ``test_fetch_http.py``
  (redirects re-checked: metadata address, 127.0.0.2, file://, ftp://, https->http; connection pinned to
  the checked address); here: redirects to every loopback spelling and link-local v6, the explanation
  links' bucket; ``test_security_services.py``: the console's image preview; the HTTP corpus: the intake's
  reference bucket allow-list;
* object keys stay under their prefix: explainer keys and model keys for any input (Hypothesis); intake
  upload keys are the content hash (``test_badinput_http.py``: a ``../../../etc/passwd.png`` upload);
* credentials never in logs or /metrics; API keys and moderator passwords stored hashed; review console
  sessions and CSRF: ``test_security_services.py``;
* weights load only from safetensors with a matching sha256: here;
* every SQL statement parameterised: ``test_security_sql.py`` (static) and ``test_security_services.py``
  (injection strings through the console and the feedback consumer, and ``test_badinput_feedback.py``).
"""

from __future__ import annotations

import ast
import hashlib
import io
import os
import pickle
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from explainer.sink import object_keys
from ingest.api.images import explanation_location
from ingest.errors import PermanentError
from ingest.fetch import Fetcher, FetchSettings
from ingest.intake import IntakeSettings
from retrainer.registry import ModelRegistry, RegistryError
from scorer.hotswap import fetch_verified_model
from scorer.weights import load_weights
from tests.fetch_helpers import PNG, MemoryStore, code_of, msg
from tests.scorer_helpers import make_weights

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["ingest", "scorer", "explainer", "retrainer", "deploy"]

# -- SSRF: redirects to internal addresses --------------------------------------------------------


class Redirector:
    """Serves /ok.png and /to?<n> (a redirect to TARGETS[n]) on 127.0.0.2, the one address allowed."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.paths.append(self.path)
                if self.path == "/ok.png":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PNG)))
                    self.end_headers()
                    self.wfile.write(PNG)
                    return
                target = outer.targets[int(self.path.rsplit("?", 1)[1])]
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.2", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        p = self.port
        self.targets = [
            f"http://localhost:{p}/ok.png",
            f"http://127.0.0.1:{p}/ok.png",
            f"http://[::1]:{p}/ok.png",
            f"http://2130706433:{p}/ok.png",
            f"http://0177.0.0.1:{p}/ok.png",
            f"http://0.0.0.0:{p}/ok.png",
            f"http://[::ffff:127.0.0.1]:{p}/ok.png",
            "http://169.254.169.254/latest/meta-data/iam/",
            "http://[fe80::1]/",
            "http://10.0.0.1/",
            "file:///etc/passwd",
            f"gopher://127.0.0.2:{p}/",
            "http://internal.example/",
        ]


REDIRECT_CODES = ["address_not_allowed"] * 10 + ["scheme_not_allowed"] * 2 + ["host_not_allowed"]


@pytest.fixture(scope="module")
def redirector() -> Iterator[Redirector]:
    r = Redirector()
    thread = threading.Thread(target=r.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield r
    r.httpd.shutdown()
    r.httpd.server_close()


@pytest.mark.parametrize("n", range(len(REDIRECT_CODES)))
def test_redirects_to_internal_addresses_are_refused(n: int, redirector: Redirector) -> None:
    hosts = ["127.0.0.2", "localhost", "127.0.0.1", "::1", "2130706433", "0177.0.0.1", "0.0.0.0"]
    hosts += ["::ffff:127.0.0.1", "169.254.169.254", "fe80::1", "10.0.0.1"]
    settings = FetchSettings(
        http_enabled=True,
        http_allowed_hosts=hosts,
        allowed_private_networks=["127.0.0.2/32"],  # type: ignore[list-item]
    )
    with Fetcher(MemoryStore(), settings) as f:
        assert f.fetch(msg(f"http://127.0.0.2:{redirector.port}/ok.png")) == PNG  # the control
        before = len(redirector.paths)
        code = code_of(f, msg(f"http://127.0.0.2:{redirector.port}/to?{n}"))
    assert (redirector.targets[n], code) == (redirector.targets[n], REDIRECT_CODES[n])
    assert redirector.paths[before:] == [f"/to?{n}"], "the redirect target must never be requested"


# -- bucket allow-list for the links the API hands out ------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "s3://models/v1/abc.safetensors",
        "s3://images/abc",
        "../models/x",
        "a/../../b",
        "s3://explanations/../x",
    ],
)
def test_explanation_links_stay_in_the_explanations_bucket(key: str) -> None:
    st_ = cast(Any, SimpleNamespace(settings=IntakeSettings()))
    with pytest.raises(ValueError):
        explanation_location(st_, key)
    assert explanation_location(st_, "a1/v1/gradcam/map.png") == ("explanations", "a1/v1/gradcam/map.png")
    assert explanation_location(st_, "s3://explanations/a/b.png") == ("explanations", "a/b.png")


# -- object keys --------------------------------------------------------------------------------

hostile = st.text(max_size=80) | st.sampled_from(["..", ".", "../../models/x", "a/../../b", "/abs", "a\x00b"])


def _segments_ok(key: str) -> bool:
    return not key.startswith("/") and all(p not in {"", ".", ".."} for p in key.split("/"))


@settings(max_examples=300, deadline=None)
@given(image_id=hostile, version=hostile, method=hostile)
def test_explainer_keys_stay_under_their_image_prefix(image_id: str, version: str, method: str) -> None:
    keys = object_keys(image_id, version, method)
    prefix = {k.split("/")[0] for k in keys.values()}
    assert len(prefix) == 1 and all(_segments_ok(k) and k.count("/") == 3 for k in keys.values())
    assert object_keys(image_id, "other-version", method)["map"].split("/")[0] == prefix.pop()


@settings(max_examples=300, deadline=None)
@given(version=hostile)
def test_model_keys_stay_under_the_registry_prefix(version: str) -> None:
    registry = ModelRegistry(cast(Any, None), MemoryStore(), cast(Any, None), key_prefix="tenant-a/")
    try:
        key = registry.object_key(version, "ab" * 32)
    except RegistryError:
        return
    assert key.startswith("tenant-a/") and _segments_ok(key) and key.count("/") == 2, key


@pytest.mark.parametrize("version", ["../tenant-b/v1", "v1/../../x", "..", "v1\n", "a/b", ""])
def test_model_keys_refuse_versions_that_are_paths(version: str) -> None:
    registry = ModelRegistry(cast(Any, None), MemoryStore(), cast(Any, None), key_prefix="tenant-a/")
    with pytest.raises(RegistryError):
        registry.object_key(version, "ab" * 32)


# -- weights: safetensors only, sha256 checked -------------------------------------------------


class Payload:
    """Unpickling this creates a directory: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _torch_pickle(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(1), "evil": Payload(marker)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["torch.save", "raw pickle"])
def test_pickled_weights_are_refused_without_running_them(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = _torch_pickle(marker) if kind == "torch.save" else pickle.dumps(Payload(marker))
    store = MemoryStore()
    store.put("models", "v9/evil.safetensors", data)
    with pytest.raises(PermanentError) as info:  # the hash matches: only the format refuses it
        fetch_verified_model(store, "v9/evil.safetensors", hashlib.sha256(data).hexdigest(), "v9", "cpu")
    assert info.value.code == "unloadable"
    path = tmp_path / "evil.pt"
    path.write_bytes(data)
    with pytest.raises(Exception):  # noqa: B017 - any refusal will do, as long as nothing ran
        load_weights(path)
    assert not marker.exists(), "pickled code ran while loading weights"


def test_weights_with_a_wrong_sha256_are_refused(tmp_path: Path) -> None:
    data = make_weights(tmp_path / "w.safetensors", "v7", seed=1).read_bytes()
    store = MemoryStore()
    store.put("models", "v7/w.safetensors", data)
    good = hashlib.sha256(data).hexdigest()
    assert fetch_verified_model(store, "v7/w.safetensors", good, "v7", "cpu").version == "v7"  # the control
    for wrong in (hashlib.sha256(data + b"x").hexdigest(), "0" * 64, good.upper()):
        with pytest.raises(PermanentError) as info:
            fetch_verified_model(store, "v7/w.safetensors", wrong, "v7", "cpu")
        assert info.value.code == "sha256_mismatch"
    tampered = bytearray(data)
    tampered[-1] ^= 1
    store.put("models", "v7/w.safetensors", bytes(tampered))
    with pytest.raises(PermanentError) as info:
        fetch_verified_model(store, "v7/w.safetensors", good, "v7", "cpu")
    assert info.value.code == "sha256_mismatch"


def _unpickling_calls(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name in {
            "torch.load",
            "pickle.load",
            "pickle.loads",
            "joblib.load",
            "dill.load",
            "torch.jit.load",
        }:
            out.append(name)
        if name in {"np.load", "numpy.load"}:
            kw = {k.arg: k.value for k in node.keywords}
            allow = kw.get("allow_pickle")
            if not (isinstance(allow, ast.Constant) and allow.value is False):
                out.append(name + " without allow_pickle=False")
    return out


def test_no_service_code_unpickles() -> None:
    assert _unpickling_calls(ast.parse("import torch\ntorch.load('x.pt')")) == ["torch.load"]
    assert _unpickling_calls(ast.parse("np.load(p)")) and not _unpickling_calls(
        ast.parse("np.load(p, allow_pickle=False)")
    )
    found = {
        f"{p.relative_to(ROOT)}: {c}"
        for pkg in SERVICES
        for p in (ROOT / pkg).rglob("*.py")
        for c in _unpickling_calls(ast.parse(p.read_text()))
    }
    assert found == set()
