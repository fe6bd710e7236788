"""Warm-started parallel (Picard) rollouts: sweeps run to convergence are the sequential sampler,
the warm start is the shift along the linear path, and ``--rollout picard`` runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

from shortcut_diffusion import UsageError, make_scheduler
from shortcut_diffusion.gradients import get_method
from shortcut_diffusion.gradients.base import Sampling
from shortcut_diffusion.gradients.picard import (Evaluated, PicardRollout, PicardSettings, corrected_scan, linear_schedule,
                                                 picard_solve, scan, secant_slopes)
from shortcut_diffusion.tasks.generate import generate
from shortcut_diffusion.tasks.latent.optimize import optimize_latent

STEPS = 6


def _scheduler(model, name: str, **config):
    return make_scheduler(name, like=None if name == "flow-euler" else model.scheduler, **config)


def _sampling(model, scheduler, labels, start: int = 0) -> Sampling:
    return Sampling(model.denoiser(), scheduler, STEPS, cond=model.conditioning(labels), generator=0, start=start,
                    set_timesteps_kwargs=model.timestep_kwargs(STEPS))


@pytest.mark.parametrize("name, config, atol", [("ddim", {}, 1e-11), ("ddim", {"prediction_type": "v_prediction"}, 1e-11),
                                                ("flow-euler", {}, 1e-5)])
@pytest.mark.parametrize("start", [0, 2])
def test_sweeps_run_to_convergence_equal_the_sequential_sampler(tiny64, name, config, atol, start):
    # flow-euler: diffusers' step itself rounds to float32, hence its looser tolerance
    scheduler = _scheduler(tiny64, name, **config)
    labels = [1, 4]
    z = torch.randn((2, *tiny64.sample_shape), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    sampling = _sampling(tiny64, scheduler, labels, start)
    with torch.no_grad():
        sequential = sampling.run(z).sample
        cold = torch.stack([z] * (STEPS - start + 1))
        _, _, states, info, _ = picard_solve(sampling, z, cold, sweeps=STEPS - start, tol=0.0)
        _, _, partial, _, _ = picard_solve(sampling, z, cold, sweeps=1, tol=0.0)
    assert info["picard_sweeps"] == STEPS - start
    torch.testing.assert_close(states[-1], sequential, rtol=0, atol=atol)
    assert (partial[-1] - sequential).abs().max() > 1e3 * atol  # one cold sweep is not the answer yet


def test_warm_start_is_the_previous_trajectory_shifted_along_the_linear_path(tiny64):
    scheduler = _scheduler(tiny64, "ddim")
    sampling = _sampling(tiny64, scheduler, [2])
    z = torch.randn((1, *tiny64.sample_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dz = 1e-3 * torch.randn_like(z)
    _, schedule = linear_schedule(sampling, z)
    data = torch.randn((STEPS, *z.shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    before, after = scan(z, data, schedule.data), scan(z + dz, data, schedule.data)
    # with the clean-sample predictions held, each state moves by its coefficient on the start
    products = torch.tensor([1.0] + [c for c, _ in schedule.data], dtype=torch.float64).cumprod(0)
    torch.testing.assert_close(after - before, products.view(-1, 1, 1, 1, 1) * dz, rtol=1e-9, atol=1e-14)
    assert products.abs().max() <= 1 + 1e-12 < max(abs(a) for a, _ in schedule.step)
    # the two forms of the recursion are the same map
    outputs = schedule.to_outputs(data, before)
    torch.testing.assert_close(scan(z, outputs, schedule.step), before, rtol=0, atol=1e-12)
    torch.testing.assert_close(schedule.to_data(outputs, before), data, rtol=0, atol=1e-12)
    # and the warm guess is close: it, and one sweep from it, beat the cold start by far
    with torch.no_grad():
        exact = sampling.run(z).sample
        _, previous, _, _, _ = picard_solve(sampling, z, torch.stack([z] * (STEPS + 1)), sweeps=STEPS, tol=0.0)
        target = sampling.run(z + dz).sample
        cold = torch.stack([z + dz] * (STEPS + 1))
        guess = scan(z + dz, previous, schedule.data)
        _, _, warm, _, _ = picard_solve(sampling, z + dz, guess, sweeps=1, tol=0.0)
        _, _, from_cold, _, _ = picard_solve(sampling, z + dz, cold, sweeps=1, tol=0.0)
    moved = (target - exact).abs().max()
    assert (guess[-1] - target).abs().max() < 2 * moved
    assert (warm[-1] - target).abs().max() < 2 * moved < 0.01 * (from_cold[-1] - target).abs().max()


def test_the_picard_gradient_is_the_sdo_gradient_at_convergence(tiny64):
    scheduler = _scheduler(tiny64, "ddim")
    w = torch.randn((2, *tiny64.sample_shape), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = torch.randn((2, *tiny64.sample_shape), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    method = PicardRollout(get_method("sdo"), PicardSettings(sweeps=STEPS, tol=0.0, every=0))

    def grad(estimator, latent):
        leaf = latent.clone().requires_grad_(True)
        out = generate(tiny64, leaf, [1, 2], steps=STEPS, estimator=estimator, scheduler=scheduler, seed=0,
                       decode=False)
        return torch.autograd.grad((out.latents * w).sum(), leaf)[0], out

    _, first = grad(method, z)
    assert first.info["rollout"] == "sequential"
    moved = z + 0.05 * torch.randn_like(z)
    picard, second = grad(method, moved)
    reference, _ = grad("sdo", moved)
    assert second.info["rollout"] == "picard" and second.info["picard_sweeps"] <= STEPS
    torch.testing.assert_close(picard, reference, rtol=1e-9, atol=1e-11)


def test_extrapolated_warm_start_is_closer_on_a_straight_path(tiny64):
    # latents z, z + dz (swept to convergence), z + 2 dz (one sweep): carrying the predictions on by
    # their last change leaves an error second order in dz at the third, holding them one first order
    scheduler = _scheduler(tiny64, "ddim")
    z = torch.randn((2, *tiny64.sample_shape), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    dz = 1e-3 * torch.randn(z.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def third_sample_error(extrapolate: bool) -> float:
        method = PicardRollout(get_method("sdo"), PicardSettings(sweeps=STEPS, tol=0.0, every=0,
                                                                 extrapolate=extrapolate))
        for k in range(3):
            if k == 2:
                method.settings = PicardSettings(sweeps=1, tol=0.0, every=0, extrapolate=extrapolate)
            out = generate(tiny64, (z + k * dz).requires_grad_(True), [1, 2], steps=STEPS, estimator=method,
                           scheduler=scheduler, seed=0, decode=False)
        assert out.info["rollout"] == "picard"
        exact = generate(tiny64, z + 2 * dz, [1, 2], steps=STEPS, scheduler=scheduler, seed=0, decode=False,
                         plain=True).latents
        return float((out.latents.detach() - exact.detach()).abs().max())

    held, carried = third_sample_error(False), third_sample_error(True)
    assert carried < 0.01 * held


def test_secant_slopes_and_the_corrected_scan():
    g = torch.Generator().manual_seed(8)
    inputs, other = torch.randn((4, 3, 2, 5, 5), generator=g), torch.randn((4, 3, 2, 5, 5), generator=g)
    slope = torch.tensor([0.0, 0.3, 0.9, 1.4]).view(4, 1, 1, 1, 1)
    # an affine prediction d(x) = j x + b per step: the secant is j, whichever two points
    now, before = Evaluated(inputs, slope * inputs + 1.0), Evaluated(other, slope * other + 1.0)
    torch.testing.assert_close(secant_slopes(now, before), slope.view(4, 1).expand(4, 3), rtol=0, atol=1e-5)
    assert (secant_slopes(now, now) == 0).all()  # states that did not move: no slope
    assert (secant_slopes(Evaluated(inputs, -inputs), Evaluated(other, -other)) == 0).all()  # -1, clamped at 0
    coefficients = [(0.9, 0.1), (0.7, 0.3), (0.5, 0.5), (0.2, 0.8)]
    z = other[0]
    plain, _ = corrected_scan(z, now, None, coefficients)
    torch.testing.assert_close(plain, scan(z, now.data, coefficients))
    # with the affine model the corrected scan is the exact recursion x_{i+1} = C x_i + D d(x_i)
    states, data = corrected_scan(z, now, slope.view(4, 1).expand(4, 3), coefficients)
    x = z
    for i, (c, d) in enumerate(coefficients):
        x = c * x + d * (slope[i, 0] * x + 1.0)
        torch.testing.assert_close(states[i + 1], x, rtol=1e-5, atol=1e-5)
    # at a fixed point (every state where it was evaluated) the correction vanishes
    fixed = Evaluated(plain[:-1], now.data)
    torch.testing.assert_close(corrected_scan(z, fixed, slope.view(4, 1).expand(4, 3), coefficients)[0], plain)


def test_held_sweeps_ignore_earlier_evaluations(tiny64):
    # without --picard-secant, every sweep holds its predictions, whatever evaluations came before
    scheduler = _scheduler(tiny64, "ddim")
    sampling = _sampling(tiny64, scheduler, [3])
    z = torch.randn((1, *tiny64.sample_shape), generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    cold = torch.stack([z] * (STEPS + 1))
    with torch.no_grad():
        _, _, plain, _, evaluated = picard_solve(sampling, z, cold, sweeps=2, tol=0.0)
        _, _, held, _, _ = picard_solve(sampling, z, cold, sweeps=2, tol=0.0, previous=evaluated)
        _, _, moved, _, _ = picard_solve(sampling, z, cold, sweeps=2, tol=0.0, secant=True, previous=evaluated)
    assert torch.equal(plain, held) and not torch.equal(plain, moved)


@pytest.mark.parametrize("secant", [False, True])
def test_strided_sweeps_evaluate_part_of_the_steps_and_reach_the_same_fixed_point(tiny64, secant):
    scheduler = _scheduler(tiny64, "ddim")
    sampling = _sampling(tiny64, scheduler, [1, 4])
    z = torch.randn((2, *tiny64.sample_shape), generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    cold = torch.stack([z] * (STEPS + 1))
    with torch.no_grad():
        sequential = sampling.run(z).sample
        _, _, _, first, evaluated = picard_solve(sampling, z, cold, sweeps=1, tol=0.0)
        _, _, states, info, _ = picard_solve(sampling, z, cold, sweeps=2 * STEPS, tol=0.0, secant=secant,
                                             previous=evaluated, stride=2)
    assert first["forward"] == STEPS and info["forward"] == STEPS // 2 * info["picard_sweeps"]  # half the steps a sweep
    torch.testing.assert_close(states[-1], sequential, rtol=0, atol=1e-10)


def test_one_secant_sweep_is_closer_than_a_held_one(tiny64):
    # one sweep per call along a straight path of latents: held predictions let the error grow from
    # call to call, secant slopes keep it far smaller
    scheduler = _scheduler(tiny64, "ddim")
    z = torch.randn((2, *tiny64.sample_shape), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    dz = 1e-2 * torch.randn(z.shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)

    def errors(secant: bool) -> list[float]:
        method = PicardRollout(get_method("sdo"), PicardSettings(sweeps=1, tol=0.0, every=0, extrapolate=False,
                                                                 secant=secant))
        out = []
        for k in range(4):
            latent = (z + k * dz).requires_grad_(True)
            got = generate(tiny64, latent, [1, 2], steps=STEPS, estimator=method, scheduler=scheduler, seed=0,
                           decode=False).latents.detach()
            exact = generate(tiny64, z + k * dz, [1, 2], steps=STEPS, scheduler=scheduler, seed=0, decode=False,
                             plain=True).latents
            out.append(float((got - exact.detach()).abs().max()))
        return out

    held, secant = errors(False), errors(True)
    assert held[0] == secant[0] == 0  # the first call is a sequential pass
    assert held[3] > held[1] > 0
    assert max(secant[1:]) < 0.5 * held[3]


@pytest.mark.parametrize("name, step_kwargs, match", [("euler", {}, "linear"), ("ddim", {"eta": 0.5}, "eta 0"),
                                                      ("dpmpp-2m", {}, "linear")])
def test_nonlinear_schedulers_are_refused_in_one_line(tiny, name, step_kwargs, match):
    method = PicardRollout(get_method("sdo"))
    with pytest.raises(UsageError, match=match) as error:
        method.check(_scheduler(tiny, name), STEPS, step_kwargs=step_kwargs)
    assert "\n" not in str(error.value)


def test_other_estimators_and_settings_are_refused(tiny):
    with pytest.raises(UsageError, match="--estimator sdo"):
        PicardRollout(get_method("full"))
    with pytest.raises(UsageError, match="--picard-sweeps"):
        PicardSettings(sweeps=0)
    with pytest.raises(UsageError, match="--picard-tol"):
        PicardSettings(tol=float("nan"))
    with pytest.raises(UsageError, match="--picard-stride"):
        PicardSettings(stride=0)
    with pytest.raises(UsageError, match="--picard-extrapolate"):
        PicardSettings(extrapolate="yes")
    with pytest.raises(UsageError, match="fine-tuning"):
        PicardRollout(get_method("sdo")).check_task("finetune")


def test_optimize_latent_with_picard_rollouts_reports_sweeps_and_cosine(tiny):
    settings = PicardSettings(sweeps=2, tol=1e-4, every=3, check=1)
    result = optimize_latent(tiny, lambda images, labels: images.mean((1, 2, 3)), [1, 2], steps=4, iters=4,
                             lr=0.05, seed=0, progress=False, scheduler="ddim", rollout="picard", picard=settings)
    rollouts = [row["rollout"] for row in result.history]
    assert rollouts == ["sequential", "picard", "picard", "sequential"]
    for row in result.history:
        assert -1.0 <= row["picard_cosine"] <= 1.0 + 1e-6 and row["check_seconds"] > 0
        assert "picard_check" not in row
    # a sequential pass's gradient is the sequential gradient
    assert all(abs(row["picard_cosine"] - 1) < 1e-5 for row in result.history if row["rollout"] == "sequential")
    warm = [row for row in result.history if row["rollout"] == "picard"]
    assert all(1 <= row["picard_sweeps"] <= 2 for row in warm)
    assert all(row["picard_cosine"] > 0.9 for row in warm)  # small steps: the warm start is close
    sequential = optimize_latent(tiny, lambda images, labels: images.mean((1, 2, 3)), [1, 2], steps=4, iters=1,
                                 lr=0.05, seed=0, progress=False, scheduler="ddim")
    torch.testing.assert_close(result.start_images, sequential.start_images)


def test_cli_latent_rollout_picard(tmp_path, capsys):
    from shortcut_diffusion.cli import main

    out = tmp_path / "run"
    code = main(["latent", "--model", "toy", "--steps", "3", "--iters", "3", "--batch", "2", "--reward", "ink",
                 "--scheduler", "ddim", "--rollout", "picard", "--picard-sweeps", "2", "--picard-every", "2",
                 "--picard-check", "2", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["rollout"] for row in rows] == ["sequential", "picard", "sequential"]
    assert "picard_cosine" in rows[0] and "picard_cosine" not in rows[1] and "picard_cosine" in rows[2]
    config = json.loads((out / "config.json").read_text())
    assert config["rollout"] == "picard" and config["picard_sweeps"] == 2


def test_cli_refuses_picard_on_a_nonlinear_scheduler(tmp_path, capsys):
    from shortcut_diffusion.cli import main

    code = main(["latent", "--model", "toy", "--steps", "3", "--iters", "1", "--batch", "1", "--reward", "ink", "--scheduler", "euler",
                 "--rollout", "picard", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sdo: error: ") and "linear" in err and err.count("\n") == 1


@pytest.mark.parametrize("family, scheduler", [("sd", "ddim"), ("sd3", "flow-euler")])
def test_rollout_picard_on_a_saved_pipeline(pipeline_dirs, family, scheduler, tmp_path):
    # guided (CFG doubles the batch: one timestep per row goes with it) and prompt-conditioned
    from shortcut_diffusion.cli import main

    out = tmp_path / "run"
    assert main(["latent", "--model", str(pipeline_dirs[family]), "--reward", "ink", "--steps", "3", "--iters", "3",
                 "--batch", "2", "--prompt", "a red cube", "--height", "16", "--width", "16", "--scheduler", scheduler,
                 "--rollout", "picard", "--picard-every", "0", "--picard-check", "1", "--picard-chunk", "2",
                 "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["rollout"] for row in rows] == ["sequential", "picard", "picard"]
    assert all(row["picard_cosine"] > 0.5 for row in rows)


def test_rollout_picard_on_random_sd15():
    # the SD 1.5 network with random weights, class-conditioned through per-row tables, guided
    from shortcut_diffusion.models.loading import load_model

    model = load_model("random:sd15:32:tiny")
    result = optimize_latent(model, lambda images, labels: images.mean((1, 2, 3)), [1, 2], steps=2, iters=2,
                             lr=0.05, seed=0, progress=False, scheduler="ddim", rollout="picard",
                             picard=PicardSettings(check=1))
    assert [row["rollout"] for row in result.history] == ["sequential", "picard"]
    assert result.history[1]["picard_sweeps"] >= 1 and result.history[1]["picard_cosine"] > 0.5
