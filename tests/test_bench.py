"""``sdo bench``: the harness runs and writes its outputs (not the numbers)."""

from __future__ import annotations

import csv

import pytest

from shortcut_diffusion import UsageError
from shortcut_diffusion.measure.bench import BenchConfig, run_bench
from shortcut_diffusion.measure.bench.cost import COLUMNS, measure
from shortcut_diffusion.cli import main


def test_measure_counts_one_configuration():
    sdo = measure("toy", "sdo", steps=3, batch=1, repeats=1, reward_spec="auto", seed=0, device_name="cpu")
    floor = measure("toy", None, steps=3, batch=1, repeats=1, reward_spec="auto", seed=0, device_name="cpu")
    assert (sdo["estimator"], sdo["nfe_forward"], sdo["nfe_backward"]) == ("sdo", 3, 1)
    assert (floor["estimator"], floor["nfe_forward"], floor["nfe_backward"], floor["saved_bytes"]) == ("sampling", 3, 0, 0)
    assert sdo["saved_bytes"] > 0 and sdo["peak_mem_mb"] > 0 and sdo["seconds_per_iter"] > 0
    # where the time goes: with one timed iteration the phases add up to it
    for row in (sdo, floor):
        phases = [row[f"{p}_s"] for p in ("network_forward", "sampler_other", "decode_reward", "backward")]
        assert min(phases) >= 0 and row["network_forward_s"] > 0
        assert sum(phases) == pytest.approx(row["seconds_per_iter"], rel=1e-6)
    assert floor["backward_s"] < 1e-3  # nothing to backpropagate


def test_quick_run_writes_csv_report_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--estimators", "sdo", "--out", str(out)]) == 0
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == COLUMNS
    assert {(r["estimator"], r["steps"]) for r in rows} == {("sampling", "2"), ("sdo", "2"), ("sampling", "4"), ("sdo", "4")}
    report = (out / "report.md").read_text()
    assert "## N = 2" in report and "## Targets" in report and "sdo bench" in report
    assert "## Where the time goes (N = 4)" in report and "sampling / full" not in report  # no full in this run
    assert (out / "cost_vs_steps.png").stat().st_size > 0


def test_bad_bench_options(tmp_path):
    with pytest.raises(UsageError, match="unknown estimator"):
        run_bench(BenchConfig(estimators=["fast"], out=str(tmp_path)), log=None)
    with pytest.raises(UsageError, match="k=9 is out of range 1..4"):
        run_bench(BenchConfig(model="toy", steps=[4], estimators=["truncated:k=9"], out=str(tmp_path)), log=None)


def test_cosine_to_full_is_reported_per_configuration():
    row = measure("toy", "sdo:k=all", steps=3, batch=1, repeats=1, reward_spec="auto", seed=0, device_name="cpu")
    assert row["cosine_to_full"] == pytest.approx(1.0, abs=1e-5)  # sdo keeping every step is full
    truncated = measure("toy", "truncated:k=1", steps=3, batch=1, repeats=1, reward_spec="auto", seed=0, device_name="cpu")
    assert truncated["cosine_to_full"] == 0.0  # no gradient reaches the initial noise


def test_quick_time_to_reward_writes_its_tables(tmp_path):
    import json

    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--estimators", "sdo", "--time-to-reward", "--out", str(out)]) == 0
    rows = json.loads((out / "time_to_reward.json").read_text())
    assert {(r["task"], r["estimator"]) for r in rows} == {("latent", "full"), ("latent", "sdo"),
                                                          ("finetune", "sdo:keep=random")}
    for r in rows:
        assert r["iterations"] >= 1 and r["curve"][0][0] >= 0
        reached = [t for t, v in r["curve"] if v >= r["threshold"]]
        assert r["seconds_to_95"] == (reached[0] if reached else None)
    latent = {r["estimator"]: r for r in rows if r["task"] == "latent"}
    level = latent["full"]["curve"][-1][1]  # the level full ends at; full reaches it by its last iterate
    assert latent["full"]["seconds_to_full_final"] is not None
    for r in latent.values():
        reached = [t for t, v in r["curve"] if v >= level]
        assert r["full_final_level"] == level and r["seconds_to_full_final"] == (reached[0] if reached else None)
    report = (out / "report.md").read_text()
    assert "## Time to reward" in report and "## Gradient fidelity" in report
    assert (out / "reward_vs_time.png").stat().st_size > 0


def test_class_fd_compares_with_the_real_digits_of_one_class():
    from shortcut_diffusion.measure.bench.reward import _target_class, real_fd_spread
    from shortcut_diffusion.models.testbed import data, load_digits_model, metrics

    classifier = load_digits_model().classifier
    train = data.load("train")
    sevens, ones = train.images[train.labels == 7], train.images[train.labels == 1]
    assert metrics.digits_fd(classifier, sevens, "held_out", [7]) < metrics.digits_fd(classifier, ones, "held_out", [7])
    assert metrics.digits_fd(classifier, sevens, "held_out", [7]) < metrics.digits_fd(classifier, sevens, "held_out")
    assert _target_class("digit-class:7") == 7 and _target_class("digit-match") is None
    mean, std = real_fd_spread(classifier, 7, batch=8, draws=20)
    assert 0 < std < mean < metrics.digits_fd(classifier, ones[:8], "held_out", [7])


def test_the_recomputing_methods_are_rows_of_the_bench():
    rows = {name: measure("toy", name, steps=4, batch=1, repeats=1, reward_spec="auto", seed=0, device_name="cpu")
            for name in ("adjoint", "doodl")}
    assert (rows["adjoint"]["nfe_forward"], rows["adjoint"]["nfe_backward"]) == (12, 4)
    assert (rows["doodl"]["nfe_forward"], rows["doodl"]["nfe_backward"]) == (24, 8)
    assert rows["adjoint"]["cosine_to_full"] > 0.9 and all(r["saved_bytes"] > 0 for r in rows.values())


def test_equal_wall_clock_rows_for_every_kind_of_method():
    """Per-step estimators, recomputing methods and a guided pass share one equal wall-clock table."""
    from shortcut_diffusion.measure.bench import reward as rw
    from shortcut_diffusion.models.testbed import load_digits_model

    rows = rw.latent_time_to_reward(load_digits_model(), "adversarial:7", 1, seconds=0.3, steps=3, batch=2,
                                    estimators=["full", "sdo", "adjoint", "doodl", "freedom:scale=1,travel=2"])
    by = {r["estimator"]: r for r in rows}
    assert all(r["iterations"] >= 1 and r["saved_bytes"] > 0 and r["panel"]["count"] == 2 for r in rows)
    assert by["freedom:scale=1,travel=2"]["iterations"] == 1 and by["freedom:scale=1,travel=2"]["network_calls"] == 5
    assert by["doodl"]["saved_bytes"] > by["adjoint"]["saved_bytes"]  # two chains' step against one
    table = rw.markdown(rows, reference="full")
    assert "saved MiB (peak)" in table and "| all 3 judges read 7 | mlp | knn | forest | realism | saturation |" in table


def test_the_budget_clock_is_wall_clock_or_the_processes_cpu_time(monkeypatch):
    import time

    from shortcut_diffusion import meters

    monkeypatch.setattr(meters, "BUDGET_CLOCKS", {"wall": lambda: 1.0, "cpu": lambda: 2.0})
    monkeypatch.delenv("SDO_BUDGET_CLOCK", raising=False)
    assert meters.budget_clock() == 1.0
    monkeypatch.setenv("SDO_BUDGET_CLOCK", "cpu")
    assert meters.budget_clock() == 2.0
    monkeypatch.setenv("SDO_BUDGET_CLOCK", "gpu")
    with pytest.raises(UsageError, match="SDO_BUDGET_CLOCK"):
        meters.budget_clock()
    monkeypatch.undo()  # the real clocks: the process's CPU time, and wall-clock
    assert meters.BUDGET_CLOCKS == {"wall": time.perf_counter, "cpu": time.process_time}
