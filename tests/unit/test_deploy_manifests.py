"""The production deployment files (deploy/k8s, deploy/compose) validate offline, and the checks can fail.

kubeconform and the Kubernetes JSON schemas are installed by deploy/setup-kubeconform (`make setup`); without
them these tests fail and say so rather than skip. No Docker engine or cluster is needed.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy import manifests
from deploy.provision import DEFAULT_PARTITIONS


@pytest.fixture(scope="module")
def tools() -> manifests.Tools:
    try:
        return manifests.find_tools()
    except manifests.ToolMissing as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def docs() -> list[tuple[Path, dict[str, Any]]]:
    return manifests.load_k8s()


def summary(output: str) -> dict[str, int]:
    m = re.search(
        r"(\d+) resources found in \d+ files? - Valid: (\d+), Invalid: (\d+), Errors: (\d+), Skipped: (\d+)",
        output,
    )
    assert m, f"no kubeconform summary line in: {output!r}"
    return dict(zip(("found", "valid", "invalid", "errors", "skipped"), map(int, m.groups()), strict=True))


def test_kubeconform_accepts_every_manifest(
    tools: manifests.Tools, docs: list[tuple[Path, dict[str, Any]]]
) -> None:
    for version in tools.k8s_versions:
        result = manifests.kubeconform(tools, [manifests.K8S_DIR], version)
        assert result.returncode == 0, f"Kubernetes {version}:\n{result.stdout}{result.stderr}"
        counts = summary(result.stdout)
        # Every document was validated against a schema: none skipped, none missing.
        assert counts == {"found": len(docs), "valid": len(docs), "invalid": 0, "errors": 0, "skipped": 0}


BROKEN = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
        - name: c
          image: example/broken:1
          imagePulPolicy: Always
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: broken}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: broken}
  maxReplicas: "six"
---
apiVersion: example.com/v1
kind: NoSuchKind
metadata: {name: broken}
"""


def test_kubeconform_rejects_a_broken_manifest(tools: manifests.Tools, tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text(BROKEN)
    result = manifests.kubeconform(tools, [tmp_path], tools.k8s_versions[-1])
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "imagePulPolicy" in out  # strict: an unknown (misspelt) field is an error
    assert "maxReplicas" in out  # wrong type
    assert "could not find schema" in out  # a kind without a schema fails instead of being skipped
    assert summary(result.stdout) == {"found": 3, "valid": 0, "invalid": 2, "errors": 1, "skipped": 0}


def test_missing_tool_names_the_setup_command(tmp_path: Path) -> None:
    with pytest.raises(manifests.ToolMissing, match="deploy/setup-kubeconform"):
        manifests.find_tools(cache=tmp_path)


def test_scorer_autoscaler_stays_within_the_partitions(docs: list[tuple[Path, dict[str, Any]]]) -> None:
    assert DEFAULT_PARTITIONS == 6
    assert manifests.partition_problems(docs, DEFAULT_PARTITIONS) == []
    changed = copy.deepcopy(docs)
    (hpa,) = (
        d
        for _, d in changed
        if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == "cifake-scorer"
    )
    assert hpa["spec"]["maxReplicas"] <= DEFAULT_PARTITIONS
    assert hpa["spec"]["minReplicas"] >= 2  # one scorer down must not stop scoring
    # The check is live: one scorer more than there are partitions is reported.
    hpa["spec"]["maxReplicas"] = DEFAULT_PARTITIONS + 1
    assert any("maxReplicas" in p for p in manifests.partition_problems(changed, DEFAULT_PARTITIONS))


def test_workloads_are_non_root_probed_and_bounded(docs: list[tuple[Path, dict[str, Any]]]) -> None:
    assert manifests.workload_problems(docs) == []
    assert manifests.reference_problems(docs) == []
    assert manifests.kustomization_problems() == []
    broken = copy.deepcopy(docs)
    for _, doc in broken:
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "cifake-scorer":
            pod = doc["spec"]["template"]["spec"]
            del pod["securityContext"]["runAsNonRoot"]
            del pod["containers"][0]["livenessProbe"]
            pod["containers"][0]["readinessProbe"]["httpGet"]["port"] = "nope"
    problems = "\n".join(manifests.workload_problems(broken))
    assert "runAsNonRoot" in problems and "no livenessProbe" in problems and "'nope'" in problems


def test_every_cifake_variable_is_a_real_setting(docs: list[tuple[Path, dict[str, Any]]]) -> None:
    env = manifests.k8s_env(docs)
    assert {"CIFAKE_KAFKA__BOOTSTRAP_SERVERS", "CIFAKE_PG__DSN", "CIFAKE_SCORER_METRICS_HOST"} <= env.keys()
    assert manifests.settings_problems(env, "deploy/k8s") == []
    typo = {**env, "CIFAKE_SCORER_METRIC_PORT": "9101", "CIFAKE_SCORER_THREADS": "two"}
    problems = "\n".join(manifests.settings_problems(typo, "typo"))
    assert "CIFAKE_SCORER_METRIC_PORT is not a settings field" in problems
    assert "ScorerSettings rejects" in problems


def test_compose_file_is_complete() -> None:
    assert manifests.compose_problems(default_partitions=DEFAULT_PARTITIONS) == []
    # Without the required passwords compose refuses to start; the check sees the same.
    problems = manifests.compose_problems(env={}, default_partitions=DEFAULT_PARTITIONS)
    assert any("POSTGRES_PASSWORD is required" in p for p in problems)


def test_compose_check_catches_a_service_without_healthcheck(tmp_path: Path) -> None:
    doc = yaml.safe_load(manifests.COMPOSE_FILE.read_text())
    del doc["services"]["scorer"]["healthcheck"]
    doc["services"]["explainer"]["environment"]["CIFAKE_EXPLAINER_NO_SUCH_KNOB"] = "1"
    broken = tmp_path / "deploy" / "compose" / "docker-compose.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(yaml.safe_dump(doc))
    (tmp_path / "deploy" / "Dockerfile").write_text("FROM scratch\n")
    problems = "\n".join(manifests.compose_problems(broken, default_partitions=DEFAULT_PARTITIONS))
    assert "compose scorer: a long-running service needs a healthcheck" in problems
    assert "CIFAKE_EXPLAINER_NO_SUCH_KNOB is not a settings field" in problems


def test_dockerfile_copies_what_exists_and_is_not_ignored(tmp_path: Path) -> None:
    assert manifests.dockerfile_problems() == []
    broken = tmp_path / "Dockerfile"
    broken.write_text(manifests.DOCKERFILE.read_text() + "COPY benchmarks ./benchmarks\nCOPY nowhere ./x\n")
    (tmp_path / "Dockerfile.dockerignore").write_text(
        manifests.DOCKERFILE.with_name("Dockerfile.dockerignore").read_text()
    )
    problems = "\n".join(manifests.dockerfile_problems(broken))
    assert "COPY benchmarks: excluded" in problems and "COPY nowhere: not in the repository" in problems


def test_the_service_image_holds_no_harness_and_no_tests() -> None:
    """What the image may contain is the allow-list in deploy/Dockerfile.dockerignore; harness/ and tests/
    are not on it, and no service package imports them (`lint-imports` in `make lint`)."""
    allowed = [
        line[1:].strip()
        for line in manifests.DOCKERFILE.with_name("Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert "ingest" in allowed and "scorer" in allowed  # the allow-list is the one being read
    assert not [a for a in allowed if a.split("/")[0] in {"harness", "tests", "benchmarks", "docs"}]
    copied = [
        line.split()[-2]
        for line in manifests.DOCKERFILE.read_text().splitlines()
        if line.startswith("COPY") and "--from" not in line
    ]
    assert not [c for c in copied if c.split("/")[0] in {"harness", "tests"}]
