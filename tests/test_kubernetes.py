"""The Kubernetes work pool's pieces, checked with prefect-kubernetes' own code (no cluster here):
our base job template extends the package's default, every Kubernetes deployment's job variables
validate against it, and the worker's own templating turns them into the Job a cluster would get."""

import asyncio
import importlib
import re
from pathlib import Path

import pytest
import yaml
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.schema_tools.validation import validate
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "deploy" / "kubernetes" / "base-job-template.json"
DEPLOYMENTS = yaml.safe_load((REPO / "deploy" / "kubernetes" / "prefect.yaml").read_text())["deployments"]
GPU_STAGES = {"pipeline", "base", "train-expert", "dsa-warmup", "generate", "distill", "opd", "mixed-rl", "baseline", "evaluate"}


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.safe_load(TEMPLATE.read_text())  # JSON is YAML


def _paths(node, prefix=()):
    """Every (path, leaf) of a nested dict/list."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))
    else:
        yield prefix, node


def test_the_template_extends_the_packages_default(template):
    """Nothing of prefect-kubernetes' default is lost (an upgrade that changes it shows here), and
    every placeholder names a declared variable."""
    default = KubernetesWorker.get_default_base_job_template()
    assert default["variables"]["properties"].items() <= template["variables"]["properties"].items()
    ours = dict(_paths(template["job_configuration"]))
    for path, value in _paths(default["job_configuration"]):
        if path[-2:] != ("containers", 0) and "containers" not in path[:-1]:
            assert ours.get(path) == value, path
    declared = set(template["variables"]["properties"])
    used = {name for _, v in _paths(template["job_configuration"]) if isinstance(v, str) for name in re.findall(r"{{\s*(\w+)\s*}}", v)}
    assert used <= declared and {"gpus", "node_selector", "run_root_claim", "run_root_mount", "shm_size"} <= used


def test_every_flow_has_a_kubernetes_deployment_like_its_local_one():
    local = {d["name"]: d["entrypoint"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert {d["name"]: d["entrypoint"] for d in DEPLOYMENTS} == local
    for d in DEPLOYMENTS:
        module, attr = d["entrypoint"].split(":")
        assert callable(getattr(importlib.import_module(module), attr)), d["entrypoint"]
        assert d["work_pool"]["name"] == "distillery-k8s"


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_job_variables_validate_and_render_to_a_job(template, deployment):
    values = deployment["work_pool"]["job_variables"]
    validate(values, template["variables"], raise_on_error=True, preprocess=True, ignore_required=True)
    # No server: values without block references need none (an API url nobody listens on proves it).
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    pod = config.job_manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == values["image"]
    gpus = values.get("gpus", 0)
    assert (gpus > 0) == (deployment["name"] in GPU_STAGES)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert pod["nodeSelector"] == values.get("node_selector", {})
    assert {"name": "runs", "mountPath": "/runs"} in container["volumeMounts"]
    assert {"name": "runs", "persistentVolumeClaim": {"claimName": "distillery-runs"}} in pod["volumes"]
    assert container["resources"]["requests"]["cpu"] == values["cpu_request"]


def test_a_bad_job_variable_is_refused(template):
    from prefect.utilities.schema_tools.validation import ValidationError

    with pytest.raises(ValidationError, match="gpus"):
        validate({"gpus": -1}, template["variables"], raise_on_error=True, preprocess=True, ignore_required=True)
    with pytest.raises(ValidationError, match="node_selector"):
        validate({"node_selector": {"gpu": 1}}, template["variables"], raise_on_error=True, preprocess=True, ignore_required=True)


def test_the_image_holds_what_the_deployments_run():
    """Every path the Dockerfile copies exists, every package the flows import is among them, and the
    deployments' working directory is the image's."""
    dockerfile = (REPO / "Dockerfile").read_text()
    copied = {m.group(1) for m in re.finditer(r"^COPY (\S+)", dockerfile, re.M)}
    for source in copied:
        for part in source.split():
            assert (REPO / part).exists(), part
    packages = yaml.safe_load((REPO / "pyproject.toml").read_text().split("[tool.setuptools.packages.find]")[1].split("\n\n")[0].replace("include = ", "include: "))
    assert {p.rstrip("*") for p in packages["include"]} <= copied
    workdir = re.search(r"^WORKDIR (\S+)", dockerfile, re.M).group(1)
    pull = yaml.safe_load((REPO / "deploy" / "kubernetes" / "prefect.yaml").read_text())["pull"]
    assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": workdir}}]
    assert f"ln -s /runs {workdir}/runs" in dockerfile
