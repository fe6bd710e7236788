"""``sdo gradcheck``: JSON report, and the properties the issue asks it to show."""

from __future__ import annotations

import json

import pytest

from shortcut_diffusion.cli import main
from shortcut_diffusion.measure.gradcheck.run import GradcheckConfig, run_gradcheck


def run_json(capsys, *argv):
    assert main(["gradcheck", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_report(capsys):
    report = run_json(capsys, "--steps", "6", "--model", "toy")
    assert report["steps"] == 6 and report["target"] == "latent"
    results = {r["estimator"]: r for r in report["results"]}
    assert list(results)[0] == "full"
    for r in report["results"]:
        assert set(r) >= {"estimator", "cosine", "rel_norm", "nfe_forward", "nfe_backward",
                          "saved_bytes", "seconds"}
    assert results["full"]["cosine"] == pytest.approx(1.0)
    assert results["truncated:k=all"]["cosine"] >= 0.9999
    assert results["checkpointed"]["cosine"] >= 0.9999
    assert results["truncated:k=1"]["cosine"] is None and results["truncated:k=1"]["rel_norm"] == 0
    assert (results["full"]["nfe_forward"], results["full"]["nfe_backward"]) == (6, 6)
    assert (results["checkpointed"]["nfe_forward"], results["checkpointed"]["nfe_backward"]) == (12, 6)
    assert (results["sdo"]["nfe_forward"], results["sdo"]["nfe_backward"]) == (6, 1)
    assert 0.5 < results["sdo"]["cosine"] <= 1.0
    assert results["sdo"]["saved_bytes"] < results["full"]["saved_bytes"] / 3
    assert results["checkpointed"]["saved_bytes"] < results["sdo"]["saved_bytes"]


def test_sdo_saved_bytes_do_not_grow_with_steps():
    def sdo_bytes(steps):
        config = GradcheckConfig(steps=steps, estimators=["sdo"], batch=1, model="toy")
        return {r["estimator"]: r["saved_bytes"] for r in run_gradcheck(config)["results"]}

    few, many = sdo_bytes(4), sdo_bytes(16)
    assert many["sdo"] <= 1.1 * few["sdo"]
    assert many["full"] >= 3.5 * few["full"]  # full grows linearly


@pytest.mark.parametrize("target", ["cond", "weights"])
def test_other_targets(target, capsys):
    report = run_json(capsys, "--steps", "4", "--target", target, "--model", "toy", "--estimators",
                      "truncated:k=1", "sdo:keep=random", "refl")
    results = {r["estimator"]: r for r in report["results"]}
    for name in ["truncated:k=1", "sdo:keep=random", "refl"]:
        assert results[name]["cosine"] is not None and results[name]["nfe_backward"] == 1


def test_table_output(capsys):
    assert main(["gradcheck", "--steps", "3", "--estimators", "sdo", "--model", "toy"]) == 0
    out = capsys.readouterr().out
    assert "estimator" in out and "\nsdo " in out and "\nfull " in out


def test_default_is_the_digits_testbed(capsys):
    report = run_json(capsys, "--steps", "5", "--estimators", "truncated:k=all", "sdo")
    assert report["model"] == "digits" and report["reward"] == "digit-match"
    results = {r["estimator"]: r for r in report["results"]}
    assert results["truncated:k=all"]["cosine"] >= 0.9999
    assert results["sdo"]["nfe_backward"] == 1 and results["sdo"]["saved_bytes"] < results["full"]["saved_bytes"] / 2


def test_recomputing_methods_print_their_rows_with_the_memory_of_one_step(capsys):
    """``sdo gradcheck --estimators full adjoint doodl drtune sdo``: every row, the adjoint close to full
    on DDIM, and the memory of the recomputing methods flat in N while full's grows."""
    rows = {}
    for steps in (5, 20):
        report = run_json(capsys, "--steps", str(steps), "--estimators", "full", "adjoint", "doodl", "drtune", "sdo")
        rows[steps] = {r["estimator"]: r for r in report["results"]}
        assert list(rows[steps]) == ["full", "adjoint", "doodl", "drtune", "sdo"]
    assert rows[20]["adjoint"]["cosine"] > 0.9 and rows[20]["doodl"]["cosine"] is not None  # (another chain)
    assert (rows[20]["adjoint"]["nfe_forward"], rows[20]["adjoint"]["nfe_backward"]) == (60, 20)
    assert (rows[20]["doodl"]["nfe_forward"], rows[20]["doodl"]["nfe_backward"]) == (120, 40)
    for name in ("adjoint", "doodl"):
        assert 0 < rows[20][name]["saved_bytes"] <= 1.05 * rows[5][name]["saved_bytes"]
    assert rows[20]["full"]["saved_bytes"] > 3.5 * rows[5]["full"]["saved_bytes"]
    assert rows[20]["adjoint"]["saved_bytes"] < rows[20]["full"]["saved_bytes"] / 10
    assert main(["gradcheck", "--steps", "3", "--estimators", "adjoint", "doodl"]) == 0
    assert "doodl differentiates EDICT" in capsys.readouterr().out


def test_recomputing_methods_refuse_what_their_sampler_cannot_follow(capsys):
    assert main(["gradcheck", "--steps", "3", "--estimators", "adjoint", "--model", "random:sd3:tiny"]) == 2
    assert "the adjoint need a diffusion (epsilon or v) model, not flow matching" in capsys.readouterr().err
    assert main(["gradcheck", "--estimators", "doodl:p=0.9"]) == 2
    assert "doodl takes no options" in capsys.readouterr().err


def test_anatomy_in_json_and_table(capsys):
    report = run_json(capsys, "--steps", "4", "--model", "toy", "--anatomy", "--estimators", "sdo", "truncated:k=1")
    rows = {r["estimator"]: r for r in report["anatomy"]["estimators"]}
    assert list(rows) == ["full", "sdo", "truncated:k=1"]
    main_cosines = {r["estimator"]: r["cosine"] for r in report["results"]}
    assert rows["sdo"]["cosine"] == pytest.approx(main_cosines["sdo"], abs=1e-6)  # the same draw as the table
    assert rows["full"]["linear_rel_norm"] == pytest.approx(rows["sdo"]["linear_rel_norm"])  # one linear path
    assert rows["truncated:k=1"]["linear_rel_norm"] == 0  # its stopped steps stay stopped
    assert len(report["anatomy"]["full_steps"]) == 5  # four steps and their sum
    assert main(["gradcheck", "--steps", "3", "--model", "toy", "--anatomy", "--estimators", "sdo"]) == 0
    assert "gradient anatomy" in capsys.readouterr().out
    assert main(["gradcheck", "--steps", "3", "--model", "toy", "--anatomy", "--target", "cond"]) == 2
    assert "use it with --target latent" in capsys.readouterr().err
