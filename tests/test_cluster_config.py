"""cluster.yaml passes Ray's own cluster-config validation, and deploy/kuberay-rayjob.yaml matches the docs.

`prepare_config` merges the AWS provider defaults and docker checks exactly as `ray up` does before it touches the
cloud; `validate_config` checks the result against ray-schema.json plus Ray's cross-field rules. No cloud calls.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_ray_validation(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(dict(cluster))
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on an invalid config
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # prepare_config filled per-type worker bounds; their minimum sum fits the global bound.
    types = prepared["available_node_types"]
    assert sum(t.get("min_workers", 0) for t in types.values()) <= prepared["max_workers"]
    assert sum(t.get("max_workers", 0) for n, t in types.items() if n != prepared["head_node_type"]) \
        <= prepared["max_workers"]


def test_ray_validation_rejects_a_broken_copy(cluster):
    """The validator is real: a typo'd field and a float resource are rejected."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    bad["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 7.5
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    bad["available_node_types"]["cpu_worker"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_cluster_node_types(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "nothing heavy should be scheduled on the head"
    gpu = [t for n, t in types.items() if t["resources"].get("GPU", 0) > 0]
    # On-demand and spot GPU nodes of the same kind (elastic runs train on the spot ones, issue 15).
    assert len(gpu) == 2 and all(t["resources"]["GPU"] == 8 for t in gpu)
    assert all(t["node_config"]["InstanceType"].startswith(("p4d", "p5", "g5.48", "p4de")) for t in gpu)
    spot = [t for t in gpu if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert len(spot) == 1 and spot[0]["resources"].get("spot_node") == 1
    cpu = [t for n, t in types.items() if n != cluster["head_node_type"] and t["resources"].get("GPU", 0) == 0]
    assert len(cpu) == 1
    assert cpu[0]["resources"]["decode_node"] >= 1
    assert cpu[0]["resources"]["CPU"] >= 32
    for t in gpu + cpu:
        assert t["max_workers"] >= 1 and t.get("min_workers", 0) == 0  # scale to zero when idle


def test_decode_resource_can_be_targeted_by_config(cluster):
    """`data.decode_resources` pins decode actors to the CPU-only nodes through the custom resource."""
    from pipeline.config import load_config

    cfg = load_config(None, ["data.decode_resources={decode_node: 0.01}"])
    (name, amount), = cfg.data.decode_resources.items()
    decode_nodes = [t for t in cluster["available_node_types"].values() if name in t["resources"]]
    assert len(decode_nodes) == 1 and "GPU" not in decode_nodes[0]["resources"]
    assert amount <= decode_nodes[0]["resources"][name]


def test_docker_install_and_shm(cluster):
    docker = cluster["docker"]
    assert re.fullmatch(r"rayproject/ray(-ml)?:2\.60\.\d+-py311-gpu", docker["image"])
    assert any("pip install" in c and "-e" in c for c in cluster["setup_commands"])
    mounted = cluster["file_mounts"]
    assert "." in mounted.values()
    assert any(m in c for m in mounted for c in cluster["setup_commands"]), "setup installs the synced project"

    def shm_gb(options):
        sizes = [o.split("=", 1)[1] for o in options or [] if o.startswith("--shm-size=")]
        return int(sizes[-1].rstrip("g")) if sizes else 0

    assert shm_gb(docker["head_run_options"]) >= 8
    for t in cluster["available_node_types"].values():
        if "docker" in t:
            assert shm_gb(t["docker"]["worker_run_options"]) >= 32


def test_dashboard_not_exposed(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head


def _docs_entrypoint() -> list[str]:
    text = (ROOT / "docs" / "cluster.md").read_text()
    # The documented Kinetics submit command: `ray job submit ... -- python jobs/train.py --config <kinetics recipe>`
    # (may span lines; the local-cluster walkthrough's synthetic commands come first and are not the RayJob's).
    pattern = (r"ray job submit[^\n]*?(?:\\\n[^\n]*?)*--\s*\\?\s*\n?\s*"
               r"(python jobs/train\.py --config jobs/configs/kinetics[^\n`\\]*)")
    match = re.search(pattern, text)
    assert match, "docs/cluster.md has no `ray job submit ... -- python jobs/train.py --config <kinetics>` command"
    return shlex.split(match.group(1))


def test_kuberay_rayjob_matches_docs():
    docs = yaml.safe_load_all((ROOT / "deploy" / "kuberay-rayjob.yaml").read_text())
    job = next(d for d in docs if d and d.get("kind") == "RayJob")
    assert job["apiVersion"].startswith("ray.io/")
    spec = job["spec"]
    entry = shlex.split(spec["entrypoint"])
    assert entry == _docs_entrypoint()
    assert entry[:2] == ["python", "jobs/train.py"] and "--config" in entry
    cluster_spec = spec["rayClusterSpec"]
    assert cluster_spec["rayVersion"].startswith("2.60")
    head = cluster_spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    images = {head["image"]} | {g["template"]["spec"]["containers"][0]["image"]
                                for g in cluster_spec["workerGroupSpecs"]}
    assert len(images) == 1, "head and workers must run the same image (same Ray, same project code)"
    groups = {g["groupName"]: g for g in cluster_spec["workerGroupSpecs"]}
    gpu_limits = {name: int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))
                  for name, g in groups.items()}
    assert max(gpu_limits.values()) >= 1, "a worker group with GPU limits"
    assert min(gpu_limits.values()) == 0, "a CPU-only decode group"
    decode = [g for g in groups.values() if "decode_node" in str(g.get("rayStartParams", {}).get("resources", ""))]
    assert decode, "the CPU group advertises the decode_node resource"
    # /dev/shm sized for the object store on every pod.
    for pod in [cluster_spec["headGroupSpec"]] + list(groups.values()):
        vols = pod["template"]["spec"].get("volumes", [])
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in vols)
