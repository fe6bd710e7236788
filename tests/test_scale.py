"""benchmarks/scale.py: the memory ceiling table, on toy-sized configurations of the real architectures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import scale  # noqa: E402


def test_every_family_runs_and_the_table_has_its_rows(tmp_path):
    assert scale.main(["--family", "sd15", "sdxl", "sd3", "flux", "--tiny", "--ladder", "1", "2", "--steps", "2",
                       "--estimators", "sdo", "checkpointed", "alignprop", "--repeats", "1", "--in-process",
                       "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "scale.json").read_text())
    assert [r["family"] for r in data["results"]] == ["sd15", "sdxl", "sd3", "flux"]
    for r in data["results"]:
        assert r["full_ceiling"] == 2
        sdo, full = r["estimators"]["sdo"], r["full_at_ceiling"]
        assert sdo["nfe_backward"] == 1 and sdo["saved_bytes"] < full["saved_bytes"]
    text = (tmp_path / "scale.md").read_text()
    assert text.count("\n| ") == 5 and "`random:flux:tiny`" in text


def test_out_of_memory_ends_the_ladder_and_is_reported(tmp_path, monkeypatch):
    real = scale.measure

    def measure(**options):
        if options["spec"] == "full" and options["steps"] >= 2 or options["spec"] == "checkpointed":
            raise RuntimeError("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**options)

    monkeypatch.setattr(scale, "measure", measure)
    assert scale.main(["--family", "sd15", "--tiny", "--ladder", "1", "2", "5", "--steps", "2", "--repeats", "1",
                       "--estimators", "sdo", "checkpointed", "--in-process", "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "scale.json").read_text())["results"][0]
    assert result["full_ceiling"] == 1 and result["estimators"]["checkpointed"] is None
    assert "out of memory" in (tmp_path / "scale.md").read_text()


def test_other_failures_are_not_taken_for_out_of_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "measure", lambda **options: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        scale.main(["--family", "sd15", "--tiny", "--ladder", "1", "--in-process", "--out", str(tmp_path)])


def test_the_new_methods_of_the_registry_run_on_a_flow_family_and_the_loss_only_one_is_na(tmp_path):
    new = ["leapalign", "flowbp-sparse", "flowbp-bridge", "flowbp-lagrange", "draft-lv", "direct-align", "drtune",
           "adjoint-matching"]
    assert set(new) <= set(scale.METHODS)
    assert scale.main(["--family", "sd3", "--toy", "--ladder", "1", "--steps", "3", "--estimators", *new,
                       "--repeats", "1", "--in-process", "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "scale.json").read_text())["results"][0]["estimators"]
    assert "fine-tuning loss" in rows.pop("adjoint-matching")["refused"]  # not a gradient of a latent's reward
    assert all(r["steps"] == 3 and r["nfe_forward"] >= 3 and r["cosine_to_full"] is not None for r in rows.values())
    assert rows["direct-align"]["nfe_backward"] == 1  # one differentiable step, by its definition
    line = next(l for l in (tmp_path / "scale.md").read_text().splitlines() if l.startswith("| sd3"))
    assert line.count("n/a") == 1 and "out of memory" not in line


def wan_smoke(tmp_path, *extra):
    return scale.main(["--family", "wan", "--toy", "--ladder", "1", "2", "--frame-ladder", "1", "5", "--frames", "5",
                       "--steps", "3", "--reward-frames", "stride:2", "--repeats", "1", "--in-process", "--device",
                       "cpu", "--dtype", "fp32", "--out", str(tmp_path), *extra])


def test_wan_toy_smoke_runs_every_method_as_lora_fine_tuning_with_a_multi_frame_reward(tmp_path):
    """The exact code path of the 480p run (Wan 2.1's transformer and VAE, LoRA, frame reward) at toy size."""
    assert wan_smoke(tmp_path) == 0
    result = json.loads((tmp_path / "scale.json").read_text())["results"][0]
    assert result["model"] == "random:wan:tiny:blocks" and result["largest_full"] == [5, 2]
    assert [c["full_ceiling"] for c in result["ceilings"]] == [2, 2]
    rows = result["estimators"]
    assert list(rows) == scale.METHODS and all("refused" not in r for r in rows.values())
    assert all(r["task"] == "lora:4" and r["resolution"] == "3x16x16" for r in rows.values())
    assert rows["sdo"]["nfe_backward"] == 1 and rows["checkpointed"]["nfe_forward"] == 6
    assert rows["adjoint-matching"]["nfe_forward"] > 3  # its rollout and its regression onto the adjoint
    text = (tmp_path / "scale.md").read_text()
    assert "Largest frames x steps at which full backpropagation fits: 5 frames x 2 steps." in text
    assert text.count("| flowbp-lagrange |") == 1


def test_wan_ceiling_stops_at_the_first_frame_count_that_does_not_fit(tmp_path, monkeypatch):
    calls = []

    def measure(**options):
        frames = options["options"]["frames"]
        calls.append((options["spec"], frames, options["steps"]))
        if frames * options["steps"] > 5 or options["spec"] == "sdo":
            raise RuntimeError("torch.OutOfMemoryError: CUDA out of memory.")
        return {"peak_mem_mb": frames * options["steps"], "seconds_per_iter": 1.0, "saved_bytes": 0,
                "nfe_forward": 1, "nfe_backward": 1}

    monkeypatch.setattr(scale, "measure", measure)
    assert wan_smoke(tmp_path, "--frame-ladder", "1", "5", "9", "13", "--estimators", "sdo", "checkpointed") == 0
    result = json.loads((tmp_path / "scale.json").read_text())["results"][0]
    assert [(c["frames"], c["full_ceiling"]) for c in result["ceilings"]] == [(1, 2), (5, 1), (9, None)]
    assert not any(frames == 13 for _, frames, _ in calls) and result["largest_full"] == [5, 1]
    assert result["estimators"]["sdo"] is None
    assert "| sdo | out of memory |" in (tmp_path / "scale.md").read_text()


def test_a_stopped_wan_run_keeps_the_methods_row_and_the_ceilings_measured_so_far(tmp_path, monkeypatch):
    def measure(**options):
        if options["options"]["frames"] == 9:
            raise RuntimeError("the time limit of the stage")
        return {"peak_mem_mb": 1.0, "seconds_per_iter": 1.0, "saved_bytes": 0, "nfe_forward": 1, "nfe_backward": 1}

    monkeypatch.setattr(scale, "measure", measure)
    with pytest.raises(RuntimeError, match="time limit"):
        wan_smoke(tmp_path, "--frame-ladder", "1", "9", "--estimators", "sdo")
    result = json.loads((tmp_path / "scale.json").read_text())["results"][0]
    assert result["estimators"]["sdo"]["peak_mem_mb"] == 1.0 and result["largest_full"] == [1, 2]
    assert "| sdo | 1 | 1.00 |" in (tmp_path / "scale.md").read_text()
