"""Adjoint Matching (arXiv 2409.08861): the memoryless chain, the lean adjoint, the regression loss.

The math in float64: the lean adjoint is autograd's gradient of ``-lambda r`` through the chain
(noises fixed, fine-tuned model = base); the loss's gradient at the base is ``2 / h`` times the
gradient of ``-lambda r`` through the noisy steps; the loss is zero at the optimum of a linear
chain; a few steps of it raise the reward of a toy problem. Then ``sdo finetune`` with it.
"""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from shortcut_diffusion import UsageError, get_method, make_scheduler
from shortcut_diffusion.cli import main
from shortcut_diffusion.gradients import Sampling
from shortcut_diffusion.gradients.adjoint_matching import AdjointMatching, Rollout, matching_loss
from shortcut_diffusion.gradients.memoryless import MemorylessChain, lean_adjoint, step_noises
from shortcut_diffusion.tasks.finetune import FinetuneConfig, run_finetune

from conftest import class_cond, latent

STEPS = 4
LAM = 3.0


def scheduler_of(model, name):
    return make_scheduler(name, like=None if name == "flow-euler" else model.scheduler)


def reward(x):
    """A smooth nonlinear reward per row."""
    w = latent(seed=9, batch=1).to(x.dtype)
    return -((x - 0.3 * w) ** 2).flatten(1).sum(1) + (x * w).tanh().flatten(1).sum(1)


def base_of(denoiser):
    return lambda: contextlib.nullcontext(denoiser)


def rolled(model, name, steps=STEPS, grad=False):
    den, cond = model.denoiser(), class_cond(model).double()
    chain = MemorylessChain.of(Sampling(den, scheduler_of(model, name), steps, cond=cond))
    x = latent().double().requires_grad_(grad)
    noises = step_noises(chain, x, 5)
    with torch.set_grad_enabled(grad):
        xs = chain.roll(den, cond, x, noises)
    return chain, den, cond, xs


@pytest.mark.parametrize("name", ["flow-euler", "ddim"])
def test_lean_adjoint_is_autograds_gradient_through_the_memoryless_chain(tiny64, name):
    chain, den, cond, xs = rolled(tiny64, name, grad=True)
    for x in xs:
        x.retain_grad()
    (-LAM * reward(xs[-1]).sum()).backward()
    adjoints, means = lean_adjoint(chain, den, cond, [x.detach() for x in xs], xs[-1].grad)
    assert len(adjoints) == STEPS + 1 and len(means) == STEPS
    for k in range(STEPS + 1):
        torch.testing.assert_close(adjoints[k], xs[k].grad, rtol=1e-10, atol=1e-12)
    assert chain.std(STEPS - 1) == 0 and all(chain.std(k) > 0 for k in range(STEPS - 1))


def test_memoryless_flow_chain_samples_the_data_of_a_perfect_model():
    """Data N(mu, 1) in 1-D, the exact velocity: the chain's final samples approach the data's mean
    and spread as the steps shrink (a first-order chain, like DDPM)."""
    mu = 2.0

    def velocity(x, t, cond):  # E[eps - x0 | x_t] for x0 ~ N(mu, 1)
        s = float(t) / 1000
        var = (1 - s) ** 2 + s ** 2
        return (s - (1 - s)) / var * (x - (1 - s) * mu) - mu

    errors = []
    for steps in (20, 200):
        chain = MemorylessChain.of(Sampling(velocity, make_scheduler("flow-euler"), steps))
        x = torch.randn(20000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        final = chain.roll(velocity, None, x, step_noises(chain, x, 1))[-1]
        assert abs(float(final.mean()) - mu) < 0.03
        errors.append(abs(float(final.std()) - 1))
    assert errors[1] < 0.02 and errors[1] < errors[0] / 4


def test_loss_gradient_at_the_base_is_the_reward_gradient_through_the_noisy_steps(tiny64):
    """DDIM grid (h = 1 / N): grad L = (2 / h) (grad of -lam r through the chain - the noiseless last step's term)."""
    tiny64.unet.requires_grad_(True)
    params = list(tiny64.unet.parameters())
    try:
        chain, den, cond, xs = rolled(tiny64, "ddim")
        with torch.enable_grad():
            graph = chain.roll(den, cond, xs[0], step_noises(chain, xs[0], 5))
            full = torch.autograd.grad(-LAM * reward(graph[-1]).sum(), params)
            final = xs[-1].detach().requires_grad_(True)
            (last,) = torch.autograd.grad(-LAM * reward(final).sum(), final)
            m_last = chain.mean(den, cond, xs[-2], STEPS - 1)
            own = torch.autograd.grad((m_last * last).sum(), params)
            rollout = Rollout(chain, xs, final, list(range(STEPS - 1)), den, cond)
            loss = matching_loss(rollout, last, base_of(den), 0.0)
            am = torch.autograd.grad(loss.sum(), params)
    finally:
        tiny64.unet.requires_grad_(False)
    expected = [2 * STEPS * (f - o) for f, o in zip(full, own)]
    for g, e in zip(am, expected):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11)
    assert sum(float(g.abs().sum()) for g in am) > 0


class LinearFlow:
    """A linear velocity ``c(t) x`` and, tuned, a per-step shift of it."""

    def __init__(self, shifts=None):
        self.shifts = shifts or {}

    def __call__(self, x, t, cond):
        return (0.3 + float(t) / 2000) * x + self.shifts.get(float(t), 0.0)


def test_loss_is_zero_at_the_optimum_of_a_linear_chain():
    """Linear base, linear reward: the optimal control shifts each step's mean by -std^2 a_{k+1}; a
    velocity shift that does so has zero loss, and no shift has a positive one."""
    base = LinearFlow()
    chain = MemorylessChain.of(Sampling(base, make_scheduler("flow-euler"), 5))
    x = latent().double()
    w = latent(seed=3).double()
    last = -LAM * w  # the gradient of -lam <w, x>
    noises = step_noises(chain, x, 2)
    with torch.no_grad():
        adjoints, _ = lean_adjoint(chain, base, None, chain.roll(base, None, x, noises), last)
    shifts = {}
    for k in range(chain.n - 1):
        a, b, a2 = chain.alphas[k], chain.betas[k], chain.alphas[k + 1]
        c2 = (chain.betas[k + 1] ** 2 - chain.std(k) ** 2) ** 0.5
        shifts[float(chain.ts[k])] = -chain.std(k) ** 2 * adjoints[k + 1] / (-a2 * b + c2 * a)
    losses = []
    for tuned in (LinearFlow(shifts), base):
        with torch.no_grad():
            xs = chain.roll(tuned, None, x, noises)
        rollout = Rollout(chain, xs, xs[-1], list(range(chain.n - 1)), tuned, None)
        losses.append(matching_loss(rollout, last, base_of(base), 0.0))
    torch.testing.assert_close(losses[0], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-20)
    assert (losses[1] > 1).all()


class Shifted(torch.nn.Module):
    """A toy fine-tuned model: the exact velocity of data N(0, 1), plus a trained shift per step."""

    def __init__(self, timesteps):
        super().__init__()
        self.index = {float(t): k for k, t in enumerate(timesteps)}
        self.shift = torch.nn.Parameter(torch.zeros(len(timesteps), 4))
        self.tuned = True

    def forward(self, x, t, cond):
        s = float(t) / 1000
        v = (2 * s - 1) / ((1 - s) ** 2 + s ** 2) * x
        return v + self.shift[self.index[float(t)]] if self.tuned else v


@contextlib.contextmanager
def untuned(model):
    model.tuned = False
    try:
        yield model
    finally:
        model.tuned = True


def test_a_few_steps_raise_the_reward_to_the_tilted_target_of_a_toy_problem():
    """Reward mean(x) on data N(0, 1), lam = 4: the optimum tilts the chain's final law by
    exp(mean x), i.e. shifts its mean by lam / 4 times its variance under the base model."""
    scheduler, steps = make_scheduler("flow-euler"), 8
    model, method = Shifted(MemorylessChain.of(Sampling(None, scheduler, steps)).ts), AdjointMatching(lam=4.0, clip=0)
    chain = MemorylessChain.of(Sampling(model, scheduler, steps))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    evaluation = torch.randn(4096, 4, generator=torch.Generator().manual_seed(1))
    noises = step_noises(chain, evaluation, 7)

    def final():
        with torch.no_grad():
            return chain.roll(model, None, evaluation, noises)[-1]

    before = final()
    for step in range(60):
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(100 + step))
        out = method.sample(Sampling(model, scheduler, steps, generator=step), x)
        optimizer.zero_grad()
        method.training_loss(out, out.sample.mean(1), base=lambda: untuned(model)).mean().backward()
        optimizer.step()
    target = 4.0 / 4 * float(before.var())
    assert abs(float(before.mean())) < 0.05 and abs(float(final().mean()) - target) < 0.05, (before.mean(), target)


@pytest.mark.parametrize("task", ["latent", "gradcheck", "bench", "finetune:embedding"])
def test_it_is_refused_outside_lora_and_full_fine_tuning(task):
    with pytest.raises(UsageError, match="adjoint-matching"):
        get_method("adjoint-matching").check_task(task)
    get_method("adjoint-matching").check_task("finetune:lora")


def test_refusals_from_the_command_line(capsys):
    assert main(["latent", "--model", "toy", "--reward", "ink", "--steps", "2", "--iters", "1", "--batch", "2",
                 "--estimator", "adjoint-matching", "--no-progress", "--device", "cpu"]) == 2
    assert "fine-tuning loss" in capsys.readouterr().err
    for spec, words in [("adjoint-matching:lam=0", "lam"), ("adjoint-matching:clip=-1", "clip")]:
        with pytest.raises(UsageError, match=words):
            get_method(spec)
    with pytest.raises(UsageError, match="eta|step arguments"):
        get_method("adjoint-matching").check(make_scheduler("flow-euler"), 4, step_kwargs={"eta": 1.0},
                                             task="finetune")


def test_subset_of_steps():
    method = AdjointMatching(k=4)
    picks = method.subset(20)
    assert len(picks) == 4 and picks[-2:] == [17, 18] and all(p < 17 for p in picks[:2])
    assert AdjointMatching().subset(5) == [0, 1, 2, 3]


@pytest.mark.parametrize("target", ["lora", "full"])
def test_finetune_on_digits_from_the_command_line(target, tmp_path):
    out = tmp_path / "ft"
    assert main(["finetune", "--model", "digits", "--reward", "digit-match", "--cond", "3", "--target", target,
                 "--estimator", "adjoint-matching:lam=10", "--steps", "3", "--max-steps", "2", "--batch", "2",
                 "--eval-every", "0", "--eval-per-class", "1", "--checkpoint-every", "0", "--no-progress",
                 "--device", "cpu", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["grad_norm"] > 0 for r in rows) and rows[0]["grad_steps"] == 2


@pytest.mark.parametrize("family, target", [("sd3", "lora"), ("sd3", "full"), ("flux", "lora")])
def test_finetune_on_tiny_flow_pipelines(family, target, pipeline_dirs, tmp_path):
    config = FinetuneConfig(model=str(pipeline_dirs[family]), prompt=["a red cube"], height=16, width=16,
                            reward="ink", target=target, estimator="adjoint-matching:lam=10", steps=3, max_steps=2,
                            batch=1, eval_every=0, eval_per_class=1, checkpoint_every=0, device="cpu",
                            progress=False, out=str(tmp_path / "ft"))
    summary = run_finetune(config)
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert summary["stopped"] == "max_steps" and all(r["grad_norm"] > 0 for r in rows)
