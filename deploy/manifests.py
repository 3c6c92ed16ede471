"""Offline checks of the production deployment files, run by tests/unit/test_deploy_manifests.py.

    python -m deploy.manifests     # every check below; prints the problems, exits 1 if there are any

- ``deploy/k8s``: ``kubeconform -strict -summary`` against the Kubernetes JSON schemas of each version
  named in ``deploy/setup-kubeconform``, which installs both, offline, under ~/.cache/cifake-screen
  (``make setup`` runs it);
- ``deploy/k8s`` and ``deploy/compose``: what a schema cannot know -- every ``CIFAKE_*`` variable names a
  real settings field and its value parses, the scorer autoscaler stays within the partition count, every
  workload has probes, resources and a non-root security context, and budgets and autoscalers point at
  real workloads.

Dev-only module (needs PyYAML from the dev extra); the services never import it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from pydantic import BaseModel, ValidationError

REPO = Path(__file__).resolve().parent.parent
K8S_DIR = REPO / "deploy" / "k8s"
COMPOSE_FILE = REPO / "deploy" / "compose" / "docker-compose.yml"
COMPOSE_ENV_EXAMPLE = REPO / "deploy" / "compose" / "env.example"
SETUP_SCRIPT = REPO / "deploy" / "setup-kubeconform"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
SETUP_HINT = "run `deploy/setup-kubeconform` (or `make setup`, which runs it)"
KUSTOMIZATION = "kustomization.yaml"
# In deploy/k8s but deliberately not applied by kustomize (placeholder credentials).
NOT_IN_KUSTOMIZATION = frozenset({"secret.example.yaml"})
SCORER_HPA = "cifake-scorer"
# kubeconform's placeholders, laid out as in the kubernetes-validate wheel (v1.37.0-local-strict/...).
SCHEMA_TEMPLATE = (
    "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
)
# CIFAKE_* variables read by something other than a settings class.
OTHER_VARIABLES = {"CIFAKE_PARTITIONS": "deploy/provision.py --partitions"}


class ToolMissing(RuntimeError):
    """kubeconform or its schemas are not installed where deploy/setup-kubeconform puts them."""


@dataclass(frozen=True)
class Tools:
    kubeconform: Path
    schema_location: str  # kubeconform -schema-location template
    k8s_versions: tuple[str, ...]


def cache_dir() -> Path:
    """The same cache folder as the deploy/ scripts."""
    if os.environ.get("CIFAKE_CACHE_DIR"):
        return Path(os.environ["CIFAKE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cifake-screen"


def setup_constants(script: Path = SETUP_SCRIPT) -> dict[str, str]:
    """The pinned versions, read from the install script so that they are written down once."""
    values = dict(re.findall(r'^readonly ([A-Z0-9_]+)="?([^"#\n]*?)"?\s*(?:#.*)?$', script.read_text(), re.M))
    for key in ("KUBECONFORM_VERSION", "SCHEMA_PACKAGE_VERSION", "K8S_VERSIONS"):
        if not values.get(key):
            raise ValueError(f"{script}: no `readonly {key}=` line")
    return values


def find_tools(cache: Path | None = None) -> Tools:
    """Locate kubeconform and the schemas; ``ToolMissing`` says which command installs them."""
    consts = setup_constants()
    cache = cache or cache_dir()
    binary = cache / "bin" / f"kubeconform-{consts['KUBECONFORM_VERSION']}" / "kubeconform"
    if not os.access(binary, os.X_OK):
        raise ToolMissing(f"kubeconform {consts['KUBECONFORM_VERSION']} not found at {binary}: {SETUP_HINT}")
    schemas = cache / "k8s-schemas" / f"kubernetes-validate-{consts['SCHEMA_PACKAGE_VERSION']}"
    versions = tuple(consts["K8S_VERSIONS"].split())
    for version in versions:
        if not (schemas / f"v{version}-local-strict" / "_definitions.json").is_file():
            raise ToolMissing(f"Kubernetes {version} JSON schemas not found under {schemas}: {SETUP_HINT}")
    return Tools(binary, f"{schemas}/{SCHEMA_TEMPLATE}", versions)


def kubeconform(tools: Tools, paths: Iterable[Path], k8s_version: str) -> subprocess.CompletedProcess[str]:
    """Validate files or folders offline. Strict: unknown fields fail, and so does a kind without a schema."""
    cmd = [
        str(tools.kubeconform),
        "-strict",
        "-summary",
        "-kubernetes-version",
        k8s_version,
        "-schema-location",
        tools.schema_location,
        "-ignore-filename-pattern",
        re.escape(KUSTOMIZATION) + "$",
        *map(str, paths),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


# ----------------------------------------------------------------------------------------------------
# settings names


def _settings_classes() -> dict[str, type[BaseModel]]:
    """Env prefix -> settings class, longest prefix first. Imports the services (torch included)."""
    from explainer.service import ExplainerSettings
    from ingest.intake import IntakeSettings
    from ingest.settings import StackSettings
    from retrainer.settings import RetrainerSettings
    from scorer.service import ScorerSettings

    classes: list[type[BaseModel]] = [
        ScorerSettings,
        ExplainerSettings,
        RetrainerSettings,
        IntakeSettings,
        StackSettings,
    ]
    by_prefix = {str(cls.model_config.get("env_prefix", "")).upper(): cls for cls in classes}
    return dict(sorted(by_prefix.items(), key=lambda kv: -len(kv[0])))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside ``X`` or ``X | None``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _has_field(cls: type[BaseModel], path: list[str]) -> bool:
    field = cls.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    nested = _model_of(field.annotation)
    return nested is not None and _has_field(nested, path[1:])


def settings_problems(env: Mapping[str, str], where: str) -> list[str]:
    """Each ``CIFAKE_*`` name must reach a settings field, and each class must accept the values."""
    classes = _settings_classes()
    problems: list[str] = []
    for name in sorted(env):
        if not name.startswith("CIFAKE_") or name in OTHER_VARIABLES:
            continue
        prefix = next((p for p in classes if name.startswith(p)), None)
        path = name[len(prefix) :].lower().split("__") if prefix else []
        if prefix is None or not _has_field(classes[prefix], path):
            problems.append(f"{where}: {name} is not a settings field of any service")
    with mock.patch.dict(os.environ, {k: str(v) for k, v in env.items()}, clear=True):
        for cls in classes.values():
            try:
                cls(_env_file=None)  # pydantic-settings reads the patched environment only
            except ValidationError as e:
                problems.append(f"{where}: {cls.__name__} rejects the values: {e}")
    return problems


# ----------------------------------------------------------------------------------------------------
# Kubernetes


def load_k8s(folder: Path = K8S_DIR) -> list[tuple[Path, dict[str, Any]]]:
    """(file, document) for every YAML document under ``folder`` except the kustomization."""
    docs = []
    for path in sorted(folder.rglob("*.yaml")):
        if path.name == KUSTOMIZATION:
            continue
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _find(docs: Iterable[tuple[Path, dict[str, Any]]], kind: str) -> Iterator[dict[str, Any]]:
    return (doc for _, doc in docs if doc.get("kind") == kind)


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def workload_problems(docs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Non-root, probes, resources: what the manifests promise for every container."""
    problems = []
    for path, doc in docs:
        pod = _pod_spec(doc)
        if pod is None:
            continue
        where = f"{path.name}: {doc['kind']} {doc['metadata']['name']}"
        pod_sc = pod.get("securityContext", {})
        if pod_sc.get("runAsNonRoot") is not True or not pod_sc.get("runAsUser"):
            problems.append(f"{where}: pod securityContext must set runAsNonRoot and a non-zero runAsUser")
        for c in pod["containers"]:
            sc = c.get("securityContext", {})
            if (
                sc.get("allowPrivilegeEscalation") is not False
                or sc.get("readOnlyRootFilesystem") is not True
            ):
                problems.append(f"{where}/{c['name']}: needs allowPrivilegeEscalation false, read-only root")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}/{c['name']}: must drop ALL capabilities")
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(res.get(part, {})):
                    problems.append(f"{where}/{c['name']}: resources.{part} needs cpu and memory")
            if doc["kind"] == "Deployment":
                problems += _probe_problems(f"{where}/{c['name']}", c)
    return problems


def _probe_problems(where: str, container: dict[str, Any]) -> list[str]:
    ports = {p.get("name") for p in container.get("ports", [])} | {
        p["containerPort"] for p in container.get("ports", [])
    }
    problems = []
    for probe in ("livenessProbe", "readinessProbe"):
        spec = container.get(probe)
        if spec is None:
            problems.append(f"{where}: no {probe}")
        elif "httpGet" in spec and spec["httpGet"]["port"] not in ports:
            problems.append(f"{where}: {probe} port {spec['httpGet']['port']!r} is not a container port")
    return problems


def reference_problems(docs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Autoscalers, budgets, services and envFrom point at things that exist."""
    problems = []
    deployments = {d["metadata"]["name"]: d for d in _find(docs, "Deployment")}
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for hpa in _find(docs, "HorizontalPodAutoscaler"):
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            problems.append(
                f"HPA {hpa['metadata']['name']}: no Deployment {hpa['spec']['scaleTargetRef']['name']}"
            )
    for kind in ("PodDisruptionBudget", "Service"):
        for doc in _find(docs, kind):
            selector = doc["spec"].get("selector", {})
            selector = selector.get("matchLabels", selector)
            if not any(selector.items() <= labels.items() for labels in pod_labels):
                problems.append(f"{kind} {doc['metadata']['name']}: selector {selector} matches no pod")
    names = {(d["kind"], d["metadata"]["name"]) for _, d in docs}
    for _, doc in docs:
        pod = _pod_spec(doc)
        for c in pod["containers"] if pod else []:
            for ref in c.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in ref and (kind, ref[key]["name"]) not in names:
                        problems.append(
                            f"{doc['metadata']['name']}: envFrom {kind} {ref[key]['name']} not found"
                        )
    return problems


def partition_problems(docs: list[tuple[Path, dict[str, Any]]], default_partitions: int) -> list[str]:
    """More scorers than partitions of images.submitted would sit idle: maxReplicas <= partitions."""
    config = next((d for d in _find(docs, "ConfigMap") if d["metadata"]["name"] == "cifake-config"), None)
    if config is None:
        return ["no ConfigMap cifake-config"]
    partitions = int(config["data"].get("CIFAKE_PARTITIONS", default_partitions))
    problems = []
    if partitions != default_partitions:
        problems.append(
            f"CIFAKE_PARTITIONS {partitions} differs from deploy/provision's default {default_partitions}"
        )
    hpa = next(
        (d for d in _find(docs, "HorizontalPodAutoscaler") if d["metadata"]["name"] == SCORER_HPA), None
    )
    if hpa is None:
        return [*problems, f"no HorizontalPodAutoscaler {SCORER_HPA}"]
    if hpa["spec"]["maxReplicas"] > partitions:
        problems.append(
            f"HPA {SCORER_HPA}: maxReplicas {hpa['spec']['maxReplicas']} > {partitions} partitions"
        )
    if not any(m.get("type") == "External" for m in hpa["spec"].get("metrics", [])):
        problems.append(f"HPA {SCORER_HPA}: no External (consumer lag) metric")
    for d in _find(docs, "Deployment"):
        if d["spec"].get("replicas", 1) > partitions:
            problems.append(
                f"Deployment {d['metadata']['name']}: {d['spec']['replicas']} replicas > partitions"
            )
    return problems


def kustomization_problems(folder: Path = K8S_DIR) -> list[str]:
    listed = set(yaml.safe_load((folder / KUSTOMIZATION).read_text())["resources"])
    present = {p.name for p in folder.glob("*.yaml")} - {KUSTOMIZATION} - NOT_IN_KUSTOMIZATION
    return [f"{KUSTOMIZATION}: {name} is not listed" for name in sorted(present - listed)] + [
        f"{KUSTOMIZATION}: lists missing {name}" for name in sorted(listed - present)
    ]


def k8s_env(docs: list[tuple[Path, dict[str, Any]]]) -> dict[str, str]:
    """The environment the pods get: the ConfigMap plus the example Secret's keys."""
    env: dict[str, str] = {}
    for _, doc in docs:
        if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "cifake-config":
            env.update(doc["data"])
        if doc.get("kind") == "Secret":
            env.update(doc.get("stringData", {}))
    return env


# ----------------------------------------------------------------------------------------------------
# docker compose

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}``, ``$$``; a missing required VAR raises."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        value = env.get(name)
        unset = value is None or (op is not None and op.startswith(":") and value == "")
        if unset and op and op.endswith("?"):
            raise KeyError(f"{name} is required: {arg}")
        if unset and op and op.endswith("-"):
            return arg
        return value or ""

    return _VAR.sub(sub, value)


def read_env_example(path: Path = COMPOSE_ENV_EXAMPLE) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def compose_problems(
    path: Path = COMPOSE_FILE, env: Mapping[str, str] | None = None, default_partitions: int = 6
) -> list[str]:
    """What `docker compose config` and a first `up` would trip on, checked without a Docker engine."""
    doc = yaml.safe_load(path.read_text())
    env = read_env_example() if env is None else env
    services: dict[str, dict[str, Any]] = doc["services"]
    problems = []
    for name, svc in services.items():
        one_shot = svc.get("restart", "no") == "no"
        if "image" not in svc:
            problems.append(f"compose {name}: no image")
        if not one_shot and not svc.get("healthcheck", {}).get("test"):
            problems.append(f"compose {name}: a long-running service needs a healthcheck")
        build = svc.get("build")
        if build and not (path.parent / build["context"] / build["dockerfile"]).is_file():
            problems.append(f"compose {name}: build file {build['dockerfile']} not found")
        for dep, cond in (svc.get("depends_on") or {}).items():
            target = services.get(dep)
            if target is None:
                problems.append(f"compose {name}: depends on unknown service {dep}")
            elif cond.get("condition") == "service_healthy" and "healthcheck" not in target:
                problems.append(f"compose {name}: waits for {dep} to be healthy but it has no healthcheck")
        if svc.get("deploy", {}).get("replicas", 1) > default_partitions:
            problems.append(f"compose {name}: more replicas than partitions")
        try:
            svc_env = {k: interpolate(str(v), env) for k, v in (svc.get("environment") or {}).items()}
        except KeyError as e:
            problems.append(f"compose {name}: {e.args[0]} (missing from {COMPOSE_ENV_EXAMPLE.name})")
            continue
        if any(k.startswith("CIFAKE_") for k in svc_env):
            problems += settings_problems(svc_env, f"compose {name}")
    return problems


def dockerfile_problems(dockerfile: Path = DOCKERFILE) -> list[str]:
    """Each COPY source of the build context exists and survives <Dockerfile>.dockerignore's allow-list."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    allowed = [line[1:] for line in ignore.read_text().splitlines() if line.startswith("!")]
    problems = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        for source in (w for w in words[1:-1] if not w.startswith("--")):
            if not (REPO / source).exists():
                problems.append(f"{dockerfile.name}: COPY {source}: not in the repository")
            elif not any(source == a or source.startswith(a.rstrip("/") + "/") for a in allowed):
                problems.append(f"{dockerfile.name}: COPY {source}: excluded by {ignore.name}")
    return problems


# ----------------------------------------------------------------------------------------------------


def static_problems() -> list[str]:
    """Every check except kubeconform."""
    from deploy.provision import DEFAULT_PARTITIONS

    docs = load_k8s()
    return [
        *workload_problems(docs),
        *reference_problems(docs),
        *partition_problems(docs, DEFAULT_PARTITIONS),
        *kustomization_problems(),
        *settings_problems(k8s_env(docs), "deploy/k8s"),
        *compose_problems(default_partitions=DEFAULT_PARTITIONS),
        *dockerfile_problems(),
    ]


def main() -> int:
    failed = False
    try:
        tools = find_tools()
    except ToolMissing as e:
        print(f"manifests: {e}", file=sys.stderr)
        return 1
    for version in tools.k8s_versions:
        result = kubeconform(tools, [K8S_DIR], version)
        print(f"kubeconform (Kubernetes {version}): {result.stdout.strip()}")
        failed |= result.returncode != 0
    problems = static_problems()
    for problem in problems:
        print(f"manifests: {problem}")
    print(f"static checks: {len(problems)} problem(s)")
    return 1 if failed or problems else 0


if __name__ == "__main__":
    sys.exit(main())
