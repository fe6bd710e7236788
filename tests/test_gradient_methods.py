"""The one gradient-method interface: every kind of method through generate and backward.

- ``sdo:rollout=cached`` (a cached no-grad rollout, the scheduler's updates replayed on the cached
  outputs, the kept step re-run) gives the in-loop SDO gradient, in float64;
- the adjoint and DOODL through ``generate`` + ``backward`` (an autograd function whose backward
  pass recomputes the states) give their published gradients (the functional forms);
- nothing outside the gradients package tells method kinds apart.
"""

from __future__ import annotations

import pathlib
import re

import pytest
import torch

from shortcut_diffusion import generate, get_method, make_scheduler
from shortcut_diffusion.gradients import METHODS, as_method
from shortcut_diffusion.gradients.recomputed.adjoint import adjoint_gradient
from shortcut_diffusion.gradients.recomputed.edict import doodl_gradient

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "shortcut_diffusion"


def _latent_gradient(model, spec, scheduler, *, steps=5, seed=3, step_kwargs=None, target="latent"):
    x = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    w = torch.randn((2, *model.sample_shape), generator=g, dtype=torch.float64)
    params = [x.requires_grad_(True)] if target == "latent" else list(model.unet.parameters())[-3:]
    for p in params:
        p.requires_grad_(True)
    out = generate(model, x, [1, 2], steps=steps, estimator=get_method(spec, seed=seed), scheduler=scheduler,
                   seed=seed, step_kwargs=step_kwargs, decode=False)
    grads = torch.autograd.grad((out.latents * w).sum(), params)
    if target != "latent":
        for p in params:
            p.requires_grad_(False)
    return torch.cat([g.flatten() for g in grads]), out


@pytest.mark.parametrize("scheduler_name, step_kwargs", [("ddim", {}), ("ddim", {"eta": 0.7}), ("euler", {}),
                                                         ("dpmpp-2m", {}), ("flow-euler", {})])
@pytest.mark.parametrize("keep", ["first", "last", "2"])
def test_cached_rollout_sdo_equals_in_loop_sdo(tiny64, scheduler_name, step_kwargs, keep):
    scheduler = make_scheduler(scheduler_name, like=None if scheduler_name == "flow-euler" else tiny64.scheduler)
    loop, out_loop = _latent_gradient(tiny64, f"sdo:keep={keep}", scheduler, step_kwargs=step_kwargs)
    cached, out_cached = _latent_gradient(tiny64, f"sdo:keep={keep},rollout=cached", scheduler,
                                          step_kwargs=step_kwargs)
    torch.testing.assert_close(out_cached.latents, out_loop.latents, rtol=0, atol=1e-12)
    torch.testing.assert_close(cached, loop, rtol=1e-10, atol=1e-12)
    assert out_cached.plan == out_loop.plan


def test_cached_rollout_sdo_equals_in_loop_sdo_for_weights(tiny64):
    scheduler = make_scheduler("ddim", like=tiny64.scheduler)
    loop, _ = _latent_gradient(tiny64, "sdo:keep=random", scheduler, target="weights")
    cached, _ = _latent_gradient(tiny64, "sdo:keep=random,rollout=cached", scheduler, target="weights")
    assert loop.abs().sum() > 0
    torch.testing.assert_close(cached, loop, rtol=1e-10, atol=1e-12)


def test_cached_rollout_refuses_a_consumed_generator(tiny64):
    from shortcut_diffusion import UsageError

    x = torch.randn((1, *tiny64.sample_shape), dtype=torch.float64, requires_grad=True)
    with pytest.raises(UsageError, match="int seed"):
        generate(tiny64, x, [1], steps=3, estimator="sdo:rollout=cached", seed=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name, functional", [("adjoint", adjoint_gradient), ("doodl", doodl_gradient)])
@pytest.mark.parametrize("target", ["latent", "weights"])
def test_recomputing_methods_through_generate_give_their_functional_gradients(tiny64, name, functional, target):
    scheduler = make_scheduler("ddim", like=tiny64.scheduler, clip_sample=False)
    x = torch.randn((2, *tiny64.sample_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w = torch.randn((2, *tiny64.sample_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    params = list(tiny64.unet.parameters())[-3:] if target == "weights" else []
    for p in params:
        p.requires_grad_(True)
    try:
        leaf = x.clone().requires_grad_(True)
        out = generate(tiny64, leaf, [1, 2], steps=4, estimator=name, scheduler=scheduler, decode=False)
        grads = torch.autograd.grad((out.latents * w).sum(), [leaf, *params])
        cond = tiny64.conditioning([1, 2])
        reference = functional(tiny64.denoiser(), scheduler, x, lambda final: (final * w).sum(), steps=4, cond=cond,
                               params=params)
    finally:
        for p in params:
            p.requires_grad_(False)
    torch.testing.assert_close(grads[0], reference.grad, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads[1:], reference.param_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert out.info["backward_peak_bytes"] > 0 and out.info["forward"] > 0


def test_every_method_gives_a_plain_sample_without_grad(tiny64):
    scheduler = make_scheduler("ddim", like=tiny64.scheduler, clip_sample=False)
    x = torch.randn((1, *tiny64.sample_shape), dtype=torch.float64)
    with torch.no_grad():
        plain = generate(tiny64, x, [1], steps=3, scheduler=scheduler, seed=0, decode=False).latents
        for name in METHODS:
            out = generate(tiny64, x, [1], steps=3, estimator=name, scheduler=scheduler, seed=0, decode=False,
                           plain=True).latents
            if name == "doodl":  # EDICT's own chain: another sampler
                assert out.shape == plain.shape and not torch.equal(out, plain)
            elif name == "adjoint":  # DDIM on the schedule's noise levels in float64 (diffusers: float32)
                torch.testing.assert_close(out, plain, rtol=0, atol=1e-6)
            else:
                torch.testing.assert_close(out, plain, rtol=0, atol=1e-12, msg=name)


def test_as_method_takes_every_source():
    from shortcut_diffusion import Mode, Plan

    assert as_method("sdo").spec == "sdo"
    assert as_method(get_method("adjoint")).name == "adjoint"
    assert as_method(Plan.uniform(Mode.DETACH, 3)).plans == Plan.uniform(Mode.DETACH, 3)
    assert as_method(None).plans is None


def test_no_module_outside_gradients_tells_method_kinds_apart():
    """The interface's promise: kinds are the gradients package's business only."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if "gradients" in path.relative_to(SRC).parts:
            continue
        text = path.read_text()
        for pattern in (r"RecomputedMethod", r"sampler == ", r"isinstance\([^)]*(GradientEstimator|Drawn|FixedPlans)"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(SRC)}: {pattern}")
    assert offenders == []


def test_scheduler_probes_live_in_the_scheduler_module():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "schedulers.py":
            continue
        for line in path.read_text().splitlines():
            if re.search(r"(hasattr|getattr)\((sched|scheduler|first|ddim)\b", line):
                offenders.append(f"{path.relative_to(SRC)}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("spec", ["alignprop", "sdo:keep=random", "drtune", "refl"])
def test_checks_before_a_run_leave_the_methods_draws_untouched(tiny64, spec):
    """A random method's draws are the run's: checking it (range, memory, reach) must not use them."""
    checked, fresh = get_method(spec, seed=5), get_method(spec, seed=5)
    checked.check(tiny64.scheduler, 10)
    checked.held_graphs(10)
    checked.moves_start(10)
    assert [checked.plan(10) for _ in range(3)] == [fresh.plan(10) for _ in range(3)]
