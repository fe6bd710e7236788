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
                       "--repeats", "1", "--in-process", "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path)]) == 0
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
                       "--in-process", "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "scale.json").read_text())["results"][0]
    assert result["full_ceiling"] == 1 and result["estimators"]["checkpointed"] is None
    assert "out of memory" in (tmp_path / "scale.md").read_text()


def test_other_failures_are_not_taken_for_out_of_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "measure", lambda **options: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        scale.main(["--family", "sd15", "--tiny", "--ladder", "1", "--in-process", "--out", str(tmp_path)])
