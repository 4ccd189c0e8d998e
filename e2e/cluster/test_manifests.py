"""deploy/kubernetes: the manifests validate against the Kubernetes schemas, agree with each other and with the
server's flags, and the Deployment's own command line starts a server that serves the ConfigMap's models.

Rendering: the kustomization lists plain resources only (no generators, patches or transformers), so the
rendered stream `kubectl apply -k` sends is the listed files in order; `render()` checks that and concatenates
them. Validation: kubernetes-validate (PyPI; the schemas ship with it, so this runs offline), strict (unknown
fields are errors), against the oldest and the newest Kubernetes minor version it knows from OLDEST on.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import requests
import yaml

from gradserve_testing import REPO
from gradserve_testing.server import ServerProcess, server_binary, temporary_dir

K8S = REPO / "deploy" / "kubernetes"
OLDEST = "1.27.0"  # the oldest minor still in the major clouds' extended support when this was written
NOT_LISTED = {"kustomization.yaml", "secret.example.yaml"}  # secret.example.yaml: validated, never applied


def render() -> list[dict]:
    """The objects `kubectl apply -k deploy/kubernetes` applies: the kustomization's resources, in order."""
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    extra = set(k) - {"apiVersion", "kind", "resources"}
    assert not extra, f"kustomization.yaml uses {sorted(extra)}: this renderer (and the promise that the validated files are what is applied) covers plain resources only"
    files = k["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - NOT_LISTED
    assert set(files) == on_disk, f"kustomization.yaml lists {sorted(files)}, the directory holds {sorted(on_disk)}"
    docs = []
    for f in files:
        docs += [d for d in yaml.safe_load_all((K8S / f).read_text()) if d]
    return docs


def objects() -> dict[str, dict]:
    return {d["kind"]: d for d in render()}


def all_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def versions() -> list[str]:
    latest = kubernetes_validate.latest_version()
    return sorted({OLDEST, latest})


@pytest.mark.parametrize("version", versions())
@pytest.mark.parametrize("path", all_files(), ids=lambda p: p.name)
def test_schema(path: Path, version: str):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, version, strict=True)


def test_one_object_of_each_kind_and_labels_agree():
    objs = render()
    kinds = [o["kind"] for o in objs]
    assert sorted(kinds) == sorted(["ConfigMap", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"])
    dep = objects()["Deployment"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    svc, pdb, hpa = objects()["Service"], objects()["PodDisruptionBudget"], objects()["HorizontalPodAutoscaler"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": dep["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] >= 2 and pdb["spec"]["maxUnavailable"] == 1  # a drain never takes the last one
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert svc["spec"]["ports"][0]["targetPort"] in ports
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "gradserve_compute_pending"
    assert metrics["Resource"]["resource"]["name"] == "cpu"


def container() -> dict:
    (c,) = objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def flags() -> dict[str, str]:
    return {k: str(v) for k, v in next(o for o in render() if o["metadata"]["name"] == "gradserve-flags")["data"].items()}


def quantity(q: str) -> float:
    """A Kubernetes quantity ("2", "500m", "2Gi") or a gradserve byte size ("1536MiB") as a number."""
    m = re.fullmatch(r"([0-9.]+)\s*(m|Ki|Mi|Gi|Ti|KiB|MiB|GiB|TiB|K|M|G|T)?", q.strip())
    assert m, q
    scale = {None: 1, "m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    scale.update({"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40})
    return float(m.group(1)) * scale[m.group(2)]


def test_resources_match_the_flags():
    """--workers = the CPU limit (one computation per core; requests = limits: Guaranteed QoS, no CPU
    throttling of a replica that runs at its size); --memory-limit at most 80 % of the memory limit (what
    gradserve itself would take from the cgroup: the rest is the binary, OpenBLAS and connections);
    --max-request-memory within --memory-limit."""
    c, f = container(), flags()
    res = c["resources"]
    assert res["requests"] == res["limits"], "requests = limits (Guaranteed QoS)"
    assert quantity(f["GRADSERVE_WORKERS"]) == quantity(res["limits"]["cpu"])
    assert quantity(f["GRADSERVE_MEMORY_LIMIT"]) <= 0.8 * quantity(res["limits"]["memory"])
    assert quantity(f["GRADSERVE_MAX_REQUEST_MEMORY"]) <= quantity(f["GRADSERVE_MEMORY_LIMIT"])
    assert f["GRADSERVE_THREADS_PER_REQUEST"] == "1" or quantity(f["GRADSERVE_WORKERS"]) == 1


def test_probes_security_and_stopping():
    spec = objects()["Deployment"]["spec"]["template"]["spec"]
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["readinessProbe"]["failureThreshold"] == 1
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    sc, psc = c["securityContext"], spec["securityContext"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] == 10001 and sc["readOnlyRootFilesystem"]
    assert not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    # the image's user (deploy/container/runtime-setup.sh) is the uid the pod runs as
    assert "--uid 10001" in (REPO / "deploy" / "container" / "runtime-setup.sh").read_text()
    # stopping: preStop pause < grace period, and pause + one whole --deadline fits in it
    pause = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = spec["terminationGracePeriodSeconds"]
    assert 0 < pause < grace and pause + float(flags()["GRADSERVE_DEADLINE"]) < grace
    # writable: /data and /tmp only; models read-only
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/data", "/models", "/tmp"} and mounts["/models"]["readOnly"]
    env = {e["name"]: e for e in c["env"]}
    ref = env["GRADSERVE_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"] and not ref.get("optional")


def expanded_args() -> list[str]:
    """The container's command line with $(VAR) expanded from the flags ConfigMap, as the kubelet does."""
    f = flags()
    args = container()["command"] + container()["args"]
    used = {v for a in args for v in re.findall(r"\$\((\w+)\)", a)}
    assert used == set(f), f"ConfigMap keys unused: {set(f) - used}; args reference missing keys: {used - set(f)}"
    return [re.sub(r"\$\((\w+)\)", lambda m: f[m.group(1)], a) for a in args]


def test_every_flag_exists():
    help_text = subprocess.run([str(server_binary()), "serve", "--help"], capture_output=True, text=True, timeout=30).stdout
    for a in expanded_args()[2:]:
        name = a.split("=", 1)[0]
        assert name.startswith("--") and re.search(rf"(^|\s){re.escape(name)}\b", help_text), f"{name} is not a flag of this server"


def test_the_deployments_command_line_serves_the_configmaps_models(tmp_path):
    """The Deployment's arguments (flags from the ConfigMap) with --host/--port/--data-dir/--models-dir pointed
    at this machine, and the API key the Secret would give: the server starts, needs the key, and serves every
    model of gradserve-models under the id of its content, equal to what registering it answers."""
    models = temporary_dir("gs-k8s-models-")
    cm = next(o for o in render() if o["metadata"]["name"] == "gradserve-models")
    for name, text in cm["data"].items():
        assert name.endswith(".json")
        assert "model" in json.loads(text)
        (models / name).write_text(text)
    args = expanded_args()[2:]  # after "gradserve serve"
    local = {"--host", "--port", "--data-dir", "--models-dir"}
    kept = [a for a in args if a.split("=", 1)[0] not in local]
    s = ServerProcess(extra_args=[*kept, f"--models-dir={models}"], env={"GRADSERVE_API_KEY": "k8s-test-key"})
    with s:
        assert requests.get(s.url + "/v1/models", timeout=10).status_code == 401
        auth = {"Authorization": "Bearer k8s-test-key"}
        listed = requests.get(s.url + "/v1/models", headers=auth, timeout=10).json()["models"]
        assert len(listed) == len(cm["data"])
        for text in cm["data"].values():
            body = json.loads(text)
            r = requests.post(s.url + "/v1/models", headers=auth, json=body, timeout=10)
            assert r.status_code in (200, 201), r.text
            assert r.json()["id"] in {m["id"] for m in listed}
        info = requests.get(s.url + "/v1/info", headers=auth, timeout=10).json()
        assert info["workers"] == int(flags()["GRADSERVE_WORKERS"])
