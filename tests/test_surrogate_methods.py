"""The surrogate-trajectory methods (LeapAlign, FlowBP, DRaFT-LV) and FlowBP's equalities, in float64.

FlowBP (arXiv 2606.11075) writes ReFL, DRTune and LeapAlign as settings of its surrogate builder.
Here each equality is checked against an independent computation: ReFL and DRTune as per-step
plans of the one sampling loop, LeapAlign as its own two-leap module, SDO (weights) as its plan.
"""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import UsageError, generate, get_method, make_scheduler, sample
from shortcut_diffusion.gradients import Sampling, loss_weighted
from shortcut_diffusion.gradients.surrogate.chain import Chain
from shortcut_diffusion.gradients.surrogate.framework import Segment, Setting, build, euler, leap
from shortcut_diffusion.gradients.surrogate.leapalign import leap_align
from shortcut_diffusion.sampling.loop import Mode, Plan

from conftest import class_cond, latent

STEPS = 6
SURROGATES = ["leapalign", "flowbp-sparse", "flowbp-sparse:input=mean", "flowbp-bridge", "flowbp-bridge:weights=leap,k=2",
              "flowbp-lagrange", "flowbp-lagrange:weights=uniform", "draft-lv"]


def scheduler_of(model, name):
    return make_scheduler(name, like=None if name == "flow-euler" else model.scheduler)


def gradient(model, scheduler, run, target):
    """d <out - 0.3, w> / d target, for ``run(x, cond) -> output``."""
    x = latent().double().requires_grad_(target == "latent")
    params = [x] if target == "latent" else list(model.unet.parameters())
    model.unet.requires_grad_(target == "weights")
    try:
        out = run(x, class_cond(model).double())
        w = latent(seed=9).double()
        grads = torch.autograd.grad(((out - 0.3) * w).sum(), params, allow_unused=True)
    finally:
        model.unet.requires_grad_(False)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def planned(model, scheduler, plan):
    return lambda x, cond: sample(model.denoiser(), scheduler, x, steps=STEPS, estimator=plan, cond=cond).sample


def surrogate(model, scheduler, make_setting):
    def run(x, cond):
        chain = Chain.roll(Sampling(model.denoiser(), scheduler, STEPS, cond=cond), x)
        return build(chain, make_setting(chain.s))[0]
    return run


@pytest.mark.parametrize("scheduler_name", ["flow-euler", "ddim"])
@pytest.mark.parametrize("s", [2, 5])
def test_refl_is_the_flowbp_setting_one_active_step_posterior_mean(tiny64, scheduler_name, s):
    scheduler = scheduler_of(tiny64, scheduler_name)
    plan = Plan((Mode.STOP,) * s + (Mode.GRAD,) + (Mode.STOP,) * (STEPS - s - 1), x0_at=s)
    refl = gradient(tiny64, scheduler, planned(tiny64, scheduler, plan), "weights")
    flowbp = gradient(tiny64, scheduler, surrogate(
        tiny64, scheduler, lambda t: Setting((Segment(s, None, leap(t, s, None)),), {s: 1.0}, connect=False)), "weights")
    assert refl.abs().sum() > 0
    torch.testing.assert_close(flowbp, refl, rtol=1e-5, atol=1e-8)  # the scheduler steps in float32 coefficients


@pytest.mark.parametrize("scheduler_name", ["flow-euler", "ddim"])
@pytest.mark.parametrize("target", ["latent", "weights"])
@pytest.mark.parametrize("active, s", [((1, 3), 4), ((0, 2, 4), 4), ((2,), 5)])
def test_drtune_is_the_flowbp_setting_detached_inputs_posterior_mean_at_the_stop(tiny64, scheduler_name, target,
                                                                                  active, s):
    scheduler = scheduler_of(tiny64, scheduler_name)
    plan = Plan(tuple(Mode.INPUT_STOP if i in active else Mode.DETACH for i in range(STEPS)), x0_at=s)
    drtune = gradient(tiny64, scheduler, planned(tiny64, scheduler, plan), target)
    setting = lambda t: Setting((Segment(0, None, euler(t, 0, s) + leap(t, s, None)),),  # noqa: E731
                                {i: 1.0 for i in active}, connect=False)
    flowbp = gradient(tiny64, scheduler, surrogate(tiny64, scheduler, setting), target)
    assert drtune.abs().sum() > 0
    torch.testing.assert_close(flowbp, drtune, rtol=1e-5, atol=1e-8)  # the scheduler steps in float32 coefficients


@pytest.mark.parametrize("scheduler_name", ["flow-euler", "ddim"])
@pytest.mark.parametrize("target", ["latent", "weights"])
@pytest.mark.parametrize("k, j, alpha", [(0, 3, 0.3), (2, 5, 1.0), (1, 4, 0.0)])
def test_leapalign_is_the_flowbp_setting_two_leaps_bridged(tiny64, scheduler_name, target, k, j, alpha):
    scheduler = scheduler_of(tiny64, scheduler_name)
    weights = {}

    def direct(x, cond):
        out, weights["leapalign"] = leap_align(Chain.roll(Sampling(tiny64.denoiser(), scheduler, STEPS, cond=cond), x),
                                               k, j, alpha=alpha, tau=0.05)
        return out

    def bridged(x, cond):
        chain = Chain.roll(Sampling(tiny64.denoiser(), scheduler, STEPS, cond=cond), x)
        t = chain.s
        setting = Setting((Segment(k, j, leap(t, k, j)), Segment(j, STEPS, leap(t, j, STEPS))), {k: 1.0, j: 1.0},
                          alpha=alpha, tau=0.05)
        out, weights["flowbp"] = build(chain, setting)
        return out

    ours, theirs = gradient(tiny64, scheduler, direct, target), gradient(tiny64, scheduler, bridged, target)
    assert ours.abs().sum() > 0
    torch.testing.assert_close(theirs, ours, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weights["flowbp"], weights["leapalign"], rtol=1e-12, atol=0)


def test_leapalign_spec_equals_flowbp_bridge_with_leap_weights_through_generate(tiny64):
    scheduler = make_scheduler("flow-euler")
    grads = []
    for spec in ("leapalign:alpha=0.3,tau=0.1", "flowbp-bridge:weights=leap,k=2,alpha=0.3,tau=0.1"):
        def run(x, cond, spec=spec):
            out = generate(tiny64, x, cond=cond, steps=STEPS, estimator=get_method(spec, seed=4), scheduler=scheduler,
                           decode=False)
            return out.latents * out.info["loss_weight"].view(-1, 1, 1, 1)
        grads.append(gradient(tiny64, scheduler, run, "weights"))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("step", [0, 3, 5])
def test_sdo_for_the_weights_is_flowbp_sparse_with_one_active_step(tiny64, step):
    """Where SDO sits in FlowBP's space: Sparse, active set {i}, no rescaling, endpoint, Euler."""
    scheduler = make_scheduler("flow-euler")
    sdo = gradient(tiny64, scheduler, planned(tiny64, scheduler, get_method(f"sdo:keep={step}").plan(STEPS)), "weights")
    flowbp = gradient(tiny64, scheduler, surrogate(
        tiny64, scheduler, lambda t: Setting((Segment(0, STEPS, euler(t, 0, STEPS)),), {step: 1.0})), "weights")
    torch.testing.assert_close(flowbp, sdo, rtol=1e-5, atol=1e-8)  # the scheduler steps in float32 coefficients


@pytest.mark.parametrize("scheduler_name", ["flow-euler", "ddim"])
@pytest.mark.parametrize("spec", SURROGATES)
def test_forward_values_are_the_rollout_and_gradients_reach_latent_and_weights(tiny64, scheduler_name, spec):
    scheduler = scheduler_of(tiny64, scheduler_name)
    cond = class_cond(tiny64).double()
    with torch.no_grad():
        plain = sample(tiny64.denoiser(), scheduler, latent().double(), steps=STEPS, cond=cond).sample
    values = {}

    def run(x, cond, key):
        out = generate(tiny64, x, cond=cond, steps=STEPS, estimator=get_method(spec, seed=2), scheduler=scheduler,
                       decode=False)
        values[key] = out
        return out.latents

    for target in ("latent", "weights"):
        grad = gradient(tiny64, scheduler, lambda x, c: run(x, c, target), target)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, target
    out = values["latent"]
    if "input=mean" in spec:  # the posterior mean at the last active step, not the sample
        assert out.latents.shape == plain.shape
    else:
        torch.testing.assert_close(out.latents.detach(), plain, rtol=0, atol=0)  # the connector: the real sample
    assert out.plan.graph_steps == len(get_method(spec).active(get_method(spec, seed=2).draw(STEPS))) or spec == "draft-lv"


def test_similarity_weight_and_its_use_as_a_loss_weight(tiny64):
    scheduler = make_scheduler("flow-euler")
    x, cond = latent().double(), class_cond(tiny64).double()
    with torch.no_grad():
        out = generate(tiny64, x, cond=cond, steps=STEPS, estimator="leapalign:tau=10", scheduler=scheduler, decode=False)
    assert "loss_weight" not in out.info  # no grad: plain sampling
    tiny64.unet.requires_grad_(True)
    try:
        far = generate(tiny64, x, cond=cond, steps=STEPS, estimator="leapalign:tau=10", scheduler=scheduler, decode=False)
        near = generate(tiny64, x, cond=cond, steps=STEPS, estimator="leapalign:tau=1e-9", scheduler=scheduler,
                        decode=False)
        off = generate(tiny64, x, cond=cond, steps=STEPS, estimator="leapalign:tau=0", scheduler=scheduler, decode=False)
    finally:
        tiny64.unet.requires_grad_(False)
    torch.testing.assert_close(far.info["loss_weight"], torch.full((2,), 0.05, dtype=torch.float64))
    assert near.info["loss_weight"].shape == (2,) and (near.info["loss_weight"] > 0.05).all()
    assert near.info["loss_weight"][0] != near.info["loss_weight"][1]  # per row
    assert "loss_weight" not in off.info
    rewards = torch.tensor([1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(loss_weighted(rewards, far.info), rewards * 0.05)
    assert loss_weighted(rewards, off.info) is rewards


def test_per_row_draws_in_fine_tuning_rows(tiny64):
    scheduler = make_scheduler("flow-euler")
    method = get_method("leapalign").rows([1, 2, 3], STEPS)
    x, cond = latent(3).double(), class_cond(tiny64, 3).double()
    tiny64.unet.requires_grad_(True)
    try:
        out = generate(tiny64, x, cond=cond, steps=STEPS, estimator=method, scheduler=scheduler, decode=False)
    finally:
        tiny64.unet.requires_grad_(False)
    with torch.no_grad():
        plain = sample(tiny64.denoiser(), scheduler, x, steps=STEPS, cond=cond).sample
    torch.testing.assert_close(out.latents.detach(), plain, rtol=0, atol=0)
    assert out.plans is not None and len({p.modes for p in out.plans}) > 1 and out.info["loss_weight"].shape == (3,)


@pytest.mark.parametrize("spec, scheduler_name, step_kwargs, steps, words", [
    ("leapalign", "euler", {}, 4, "flow-matching Euler or a DDIM"),
    ("flowbp-sparse", "ddim", {"eta": 0.5}, 4, "eta 0"),
    ("leapalign", "ddim", {}, 1, "at least 2"),
    ("flowbp-lagrange", "flow-euler", {}, 2, "at least 3"),
])
def test_refusals_are_one_line(tiny, spec, scheduler_name, step_kwargs, steps, words):
    with pytest.raises(UsageError, match=words):
        get_method(spec).check(scheduler_of(tiny, scheduler_name), steps, step_kwargs=step_kwargs)


@pytest.mark.parametrize("spec, words", [("flowbp-bridge:weights=leap", "k=2"), ("leapalign:alpha=2", "alpha"),
                                         ("flowbp-sparse:input=x", "input"), ("draft-lv:n=0,base=0", "at least one")])
def test_bad_options_are_refused(spec, words):
    with pytest.raises(UsageError, match=words):
        get_method(spec)


def test_lagrange_weights_integrate_polynomials_and_a_one_step_segment_is_its_interval():
    from shortcut_diffusion.gradients.surrogate.framework import lagrange

    s = [1.0, 0.8, 0.55, 0.3, 0.1, 0.0]
    for a, m, order in ((0, 5, 3), (1, 4, 3), (2, 3, 3), (4, 5, 2)):  # segments of 5, 3 and 1 steps
        weights = lagrange(s, a, m, order)
        assert sum(w for _, w in weights) == pytest.approx(s[m] - s[a])  # a constant velocity is exact
        if len(weights) >= 2:  # and a linear one, at the supports' levels
            assert sum(w * s[i] for i, w in weights) == pytest.approx((s[m] ** 2 - s[a] ** 2) / 2)
    assert lagrange(s, 2, 3, 3) == ((2, s[3] - s[2]),)
