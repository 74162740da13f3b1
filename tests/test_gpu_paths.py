"""The GPU code paths, exercised on a CPU machine (CI has no GPU): pool sizing from the
cluster's resources, the Ray resources each stage actor asks for, and device choice inside
a real Ray actor that holds no GPU (torch and onnxruntime must stay on the CPU)."""

from __future__ import annotations

import pytest

from conftest import base_manifest
from deid.config import manifest_from_dict
from deid.pipeline.engine import RunError, pool_plan


def _m(tmp_path, **run):
    return manifest_from_dict(base_manifest(tmp_path / "in", tmp_path, run=run))


@pytest.mark.parametrize("gpa,gpus,cpus,want", [
    (1.0, 1, 16, 1),      # one actor per GPU
    (0.25, 1, 16, 4),     # fractions: four actors share one GPU
    (0.5, 8, 16, 16),
    (0.25, 8, 16, 16),    # never more actors than CPUs: each actor also takes one CPU
])
def test_gpu_pool_size_and_per_actor_resources(tmp_path, gpa, gpus, cpus, want):
    size, per_actor = pool_plan(_m(tmp_path, gpus_per_actor=gpa), {"CPU": cpus, "GPU": gpus})
    assert size == want
    assert per_actor == {"num_cpus": 1, "num_gpus": gpa}


def test_cpu_pool_defaults_to_one_actor_per_cpu_and_explicit_size_wins(tmp_path):
    assert pool_plan(_m(tmp_path), {"CPU": 6}) == (6, {"num_cpus": 1, "num_gpus": None})
    assert pool_plan(_m(tmp_path, actors=3), {"CPU": 6})[0] == 3
    assert pool_plan(_m(tmp_path, actors=2, gpus_per_actor=0.5), {"CPU": 6, "GPU": 1})[0] == 2


def test_asking_for_gpus_on_a_machine_without_one_is_a_clear_error(tmp_path):
    with pytest.raises(RunError, match=r"gpus_per_actor is 0.5 but this machine's Ray sees 0 GPUs"):
        pool_plan(_m(tmp_path, gpus_per_actor=0.5), {"CPU": 2})
    # On a cluster (autoscaling may add GPU nodes) the plan goes ahead.
    assert pool_plan(_m(tmp_path, gpus_per_actor=0.5, ray_address="auto"), {"CPU": 2})[0] == 1


def test_actor_without_a_gpu_runs_torch_and_onnxruntime_on_cpu(ray_local):
    ray = ray_local

    @ray.remote(num_cpus=1, num_gpus=0)
    def devices():
        import onnxruntime

        from deid.faces.insightface_backend import default_providers
        from deid.latent.torchscript import pick_device

        return str(pick_device("auto")), default_providers(), ray.get_gpu_ids(), onnxruntime.get_available_providers()

    torch_dev, providers, gpu_ids, available = ray.get(devices.remote())
    assert gpu_ids == []
    assert torch_dev == "cpu"
    assert providers == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in available


def test_forced_devices_are_honoured():
    from deid.latent.torchscript import pick_device

    assert str(pick_device("cpu")) == "cpu"
    assert str(pick_device("cuda:1")) == "cuda:1"  # a request, not a probe: loading then fails clearly
