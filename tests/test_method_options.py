"""Every option works with every gradient method, or is refused before any work with the reason.

For ``sdo latent`` (each method x each option) and ``sdo guide`` (each option): the run with the
option either differs from the same run without it (as the option documents), or exits 2 with
one line on stderr and writes nothing. ``--compile`` is checked by what it promises: the network
calls that record no graph go through ``torch.compile``.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from shortcut_diffusion.cli import main

METHODS = ["sdo", "sdo:rollout=cached", "full", "drtune", "alignprop", "adjoint", "doodl"]
BASE = ["--model", "digits", "--steps", "4", "--iters", "2", "--batch", "2", "--no-progress", "--grid-every", "0"]
OPTIONS = {
    "clip-grad": ["--clip-grad", "0.001"],
    "proximity-weight": ["--proximity-weight", "50"],
    "prior-weight": ["--prior-weight", "5"],
    "eta": ["--eta", "0.5"],
    "dtype-bf16": ["--dtype", "bf16"],
    "dtype-fp16": ["--dtype", "fp16"],
    "warmup": ["--warmup", "2"],
    "init-invert": ["--init", "invert:0", "--batch", "2"],
    "reward-augment": ["--reward-augment", "translation"],
    "compile": ["--compile"],
}
REFUSED = {  # (method, option) -> words the one-line reason contains
    ("adjoint", "eta"): "deterministic ODE", ("doodl", "eta"): "deterministic ODE",
    ("adjoint", "warmup"): "optimizes the initial noise", ("doodl", "warmup"): "optimizes the initial noise",
}
_BASELINES: dict[str, torch.Tensor] = {}


def _run(tmp_path, name: str, args: list[str], capsys) -> tuple[int, str, torch.Tensor | None]:
    out = tmp_path / name
    rc = main(["latent", *BASE, *args, "--out", str(out)])
    err = capsys.readouterr().err
    latents = load_file(str(out / "final.safetensors"))["latents"] if rc == 0 else None
    return rc, err, latents


def _baseline(tmp_path, method: str, capsys) -> torch.Tensor:
    if method not in _BASELINES:
        rc, err, latents = _run(tmp_path, "baseline", ["--estimator", method], capsys)
        assert rc == 0, err
        _BASELINES[method] = latents
    return _BASELINES[method]


@pytest.fixture
def compiled_calls(monkeypatch):
    """torch.compile replaced by a pass-through that counts the calls it compiles."""
    calls = []

    def fake_compile(fn, **options):
        def run(*args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("method", METHODS)
def test_latent_option_changes_the_run_or_is_refused(tmp_path, capsys, compiled_calls, method, option):
    baseline = _baseline(tmp_path, method, capsys)
    rc, err, latents = _run(tmp_path, "run", ["--estimator", method, *OPTIONS[option]], capsys)
    if (method, option) in REFUSED:
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert REFUSED[(method, option)] in err
        assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
        return
    assert rc == 0, err
    if option == "compile":  # what it documents: the calls without a graph run compiled
        assert compiled_calls and not any(compiled_calls)
    else:
        assert not torch.equal(latents, baseline), f"{option} was accepted but changed nothing for {method}"


GUIDE_BASE = ["--model", "digits", "--steps", "6", "--batch", "2", "--no-progress", "--scale", "0.5"]
GUIDE_OPTIONS = {
    "eta": (["--eta", "0.8"], None),
    "scale": (["--scale", "1.5"], None),
    "travel": (["--travel", "2", "--travel-window", "1", "4"], None),
    "dtype-bf16": (["--dtype", "bf16"], None),
    "reward-augment": (["--reward-augment", "translation"], None),
    "scheduler": (["--scheduler", "euler"], None),
    "compile": (["--compile"], "run it without --compile"),
}


@pytest.mark.parametrize("option", list(GUIDE_OPTIONS))
def test_guide_option_changes_the_run_or_is_refused(tmp_path, capsys, option):
    args, refused = GUIDE_OPTIONS[option]
    assert main(["guide", *GUIDE_BASE, "--out", str(tmp_path / "base")]) == 0
    capsys.readouterr()
    rc = main(["guide", *GUIDE_BASE, *args, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    if refused:
        assert rc == 2 and len(err.strip().splitlines()) == 1 and refused in err, err
        return
    assert rc == 0, err
    base = load_file(str(tmp_path / "base" / "final.safetensors"))["images"]
    run = load_file(str(tmp_path / "run" / "final.safetensors"))["images"]
    assert not torch.equal(run, base), f"sdo guide {' '.join(args)} was accepted but changed nothing"
