"""SDO's gradient on a linear toy denoiser equals the closed form in ``estimators/sdo.py``.

With eps(x) = W x and DDIM (eta = 0), step i is x_{i+1} = a_i x_i + b_i W x_i. For r = <g, x_N>:
full backpropagation gives [prod_i (a_i I + b_i W)]^T g, and SDO keeping step j gives
(prod_{i != j} a_i) (a_j I + b_j W)^T g.
"""

from __future__ import annotations

import pytest
import torch

from shortcut_diffusion import Mode, Plan, get_estimator, make_scheduler, sample

STEPS = 6
SHAPE = (2, 1, 3, 3)
DIM = 9


def ddim_coefficients(scheduler, steps):
    sched = make_scheduler("ddim", like=scheduler)
    sched.set_timesteps(steps)
    # The scheduler computes its coefficients from float32 alphas: use the same values.
    abar = sched.alphas_cumprod
    ts = sched.timesteps.tolist()
    coeffs = []
    for i, t in enumerate(ts):
        a_t = abar[t]
        prev = t - sched.config.num_train_timesteps // steps  # where diffusers' DDIM step goes
        a_prev = abar[prev] if prev >= 0 else sched.final_alpha_cumprod
        a = (a_prev / a_t).sqrt()
        b = (1 - a_prev).sqrt() - (a_prev * (1 - a_t) / a_t).sqrt()
        coeffs.append((float(a), float(b)))
    return coeffs


@pytest.fixture
def setup():
    from diffusers import DDIMScheduler

    gen = torch.Generator().manual_seed(0)
    W = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64) * 0.3
    g = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    x0 = torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False)

    def denoiser(x, t, cond):  # eps = W x on each sample's flattened pixels
        return (x.flatten(1) @ W.T).view_as(x)

    return W, g, x0, scheduler, denoiser


def grad_of(plan_or_estimator, setup):
    W, g, x0, scheduler, denoiser = setup
    x = x0.clone().requires_grad_()
    out = sample(denoiser, scheduler, x, steps=STEPS, estimator=plan_or_estimator)
    (grad,) = torch.autograd.grad((g * out.sample).sum(), x)
    return grad


def apply_transposed(M, v):
    return (v.flatten(1) @ M).view_as(v)  # rows of v times M == (M^T v_row)


def test_full_matches_closed_form(setup):
    W, g, *_ , scheduler, _ = setup
    eye = torch.eye(DIM, dtype=torch.float64)
    product = eye
    for a, b in ddim_coefficients(scheduler, STEPS):  # x_N = (M_{N-1} ... M_0) x_0
        product = (a * eye + b * W) @ product
    expected = apply_transposed(product, g)
    torch.testing.assert_close(grad_of(get_estimator("full"), setup), expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kept", [0, 2, STEPS - 1])
def test_sdo_matches_closed_form(kept, setup):
    W, g, *_ , scheduler, _ = setup
    coeffs = ddim_coefficients(scheduler, STEPS)
    scale = 1.0
    for i, (a, _) in enumerate(coeffs):
        if i != kept:
            scale *= a
    a_j, b_j = coeffs[kept]
    expected = scale * apply_transposed(a_j * torch.eye(DIM, dtype=torch.float64) + b_j * W, g)
    got = grad_of(get_estimator("sdo", keep=kept), setup)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-9)
    # and it is not the full gradient: the shortcut drops the other steps' Jacobians
    assert not torch.allclose(got, grad_of(get_estimator("full"), setup), rtol=1e-3)


def test_all_detached_is_the_pure_linear_path(setup):
    *_, g, _, scheduler, _ = setup
    scale = 1.0
    for a, _ in ddim_coefficients(scheduler, STEPS):
        scale *= a
    got = grad_of(Plan.uniform(Mode.DETACH, STEPS), setup)
    torch.testing.assert_close(got, scale * g, rtol=1e-6, atol=1e-9)


def test_anatomy_parts_match_the_closed_form(setup):
    """The linear path is (prod_i a_i) g; full's network part is full minus it; SDO keeping step j
    adds (prod_{i != j} a_i) b_j W^T g, which is also full's per-step part j."""
    from shortcut_diffusion.measure.gradcheck.anatomy import anatomy, drawn_plan

    W, g, *_, scheduler, _ = setup
    coeffs = ddim_coefficients(scheduler, STEPS)
    eye = torch.eye(DIM, dtype=torch.float64)
    product, scale = eye, 1.0
    for a, b in coeffs:
        product, scale = (a * eye + b * W) @ product, scale * a
    full, linear = apply_transposed(product, g).flatten(), (scale * g).flatten()

    def one_step(j):  # the network part of keeping step j alone
        a_j, b_j = coeffs[j]
        return (scale / a_j * b_j * apply_transposed(W, g)).flatten()

    methods = [("full", get_estimator("full")), ("sdo", get_estimator("sdo")), ("sdo:keep=3", get_estimator("sdo", keep=3))]
    report = anatomy(lambda plan: grad_of(plan, setup), [(s, drawn_plan(m, STEPS)) for s, m in methods], STEPS)
    rows = {r["estimator"]: r for r in report["estimators"]}
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    for row in rows.values():
        assert row["linear_rel_norm"] == pytest.approx(float(linear.norm() / full.norm()), rel=1e-6)
        assert row["linear_cosine"] == pytest.approx(cos(linear, full), abs=1e-7)
    assert rows["full"]["network_rel_norm"] == pytest.approx(float((full - linear).norm() / full.norm()), rel=1e-6)
    assert rows["full"]["network_cosine"] == pytest.approx(cos(full - linear, full), abs=1e-7)
    for name, j in (("sdo", 0), ("sdo:keep=3", 3)):
        assert rows[name]["network_rel_norm"] == pytest.approx(float(one_step(j).norm() / full.norm()), rel=1e-6)
        assert rows[name]["network_linear_cosine"] == pytest.approx(cos(one_step(j), linear), abs=1e-7)
        assert rows[name]["cosine"] == pytest.approx(cos(linear + one_step(j), full), abs=1e-7)
        assert report["full_steps"][j]["rel_norm"] == pytest.approx(rows[name]["network_rel_norm"], rel=1e-9)
    total = sum(one_step(j) for j in range(STEPS))  # the one-step parts add up, cross terms aside
    assert report["full_steps"][-1]["step"] is None
    assert report["full_steps"][-1]["network_cosine"] == pytest.approx(cos(total, full - linear), abs=1e-7)
