"""``LatentConfig`` and ``DemoConfig``: the options of ``sdo latent`` and ``sdo demo`` (torch-free,
so the command line builds without torch; the run itself is :mod:`.latent`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Collection, Optional

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.options.groups import (ConditionOptions, MemoryOptions, ModelOptions, OptimizerOptions,
                                               RewardOptions, RunOptions, SamplingOptions, TrackingOptions, overlay,
                                               redefault)

INVERT_BATCH = 1
NOISE_BATCH = 8
PRESETS: dict[str, dict[str, Any]] = {
    # The SDO authors' published scripts: DDIM, 50 steps, the latent after 45 warm-up steps, Adam
    # with lr 0.01 and betas (0.9, 0.9), no prior on the latent.
    "paper": {"scheduler": "ddim", "steps": 50, "warmup": 45, "lr": 0.01, "betas": [0.9, 0.9], "prior_weight": 0.0},
}
"""Named sets of options (``--preset``); options given on the command line win."""


@dataclass
class LatentConfig(TrackingOptions, RunOptions, OptimizerOptions, RewardOptions, ConditionOptions, SamplingOptions, MemoryOptions,
                   ModelOptions):
    reward: str = redefault(RewardOptions, "reward", "digit-class:7")
    cond: list[str] = redefault(ConditionOptions, "cond", ["1"])
    lr: Optional[float] = field(default=0.15, metadata={"help": "Adam learning rate"})
    batch: Optional[int] = field(default=None, metadata={"help": "latents optimized at once (default: 8 from noise, "
                                                                 "1 with --init invert:REF, which has one image)"})
    out: str = redefault(RunOptions, "out", "runs/latent")
    warmup: int = field(default=0, metadata={"help": "steps run without grad before the optimized latent"})
    init: str = field(default="noise", metadata={"help": "noise, or invert:REF (DDIM inversion of a data-set index or an image file)"})
    iters: int = field(default=30, metadata={"help": "optimization iterations"})
    prior_weight: Optional[float] = field(default=None, metadata={"help": "weight of the Gaussian (chi) prior on the initial noise (default: 100 when the initial noise is optimized, else 0)"})
    proximity_weight: float = field(default=0.0, metadata={"help": "weight of the pixel distance to the starting samples"})
    select: str = field(default="last", metadata={"help": "which iterate each sample keeps: last, or own-samples (early "
                                                     "stopping on realism: per sample the iterate nearest to the "
                                                     "model's own samples of its target class, among those whose "
                                                     "reward reached --select-min-reward; see docs/latent.md)",
                                             "choices": ["last", "own-samples"]})
    select_min_reward: float = field(default=-0.1, metadata={"help": "--select own-samples: the reward an iterate "
                                                                     "must reach to be kept (-0.1: the classifier "
                                                                     "gives the class at least 90%%)"})
    grid_every: int = field(default=10, metadata={"help": "write a start-vs-current grid every k iterations (0: never)"})
    rollout: str = field(default="sequential", metadata={"help": "how SDO's rollout is found: sequential (the sampler's "
                                                               "loop) or picard (warm-started parallel sweeps; ddim "
                                                               "eta 0 or flow-euler; see docs/latent.md)",
                                                       "choices": ["sequential", "picard"]})
    picard_sweeps: int = field(default=1, metadata={"help": "--rollout picard: parallel sweeps at most per iteration"})
    picard_tol: float = field(default=1e-3, metadata={"help": "--rollout picard: stop sweeping once no step's latent "
                                                              "moves by more than this RMS"})
    picard_every: int = field(default=10, metadata={"help": "--rollout picard: a full sequential pass every k "
                                                            "iterations (0: only the first; the final samples always)"})
    picard_check: int = field(default=0, metadata={"help": "--rollout picard: every k iterations also compute the "
                                                           "sequential SDO gradient and write its cosine to "
                                                           "metrics.jsonl (costs a pass and a backward more; 0: never)"})
    picard_chunk: int = field(default=0, metadata={"help": "--rollout picard: steps per batched network call of a "
                                                           "sweep (0: the whole trajectory at once)"})
    picard_extrapolate: bool = field(default=True, metadata={"help": "--rollout picard: warm-start from the clean-"
                                                                     "sample predictions carried on by their last "
                                                                     "change (off: held as they were)"})
    picard_secant: bool = field(default=True, metadata={"help": "--rollout picard: in each sweep's scan, move every "
                                                                "step's prediction along a secant slope fitted to its "
                                                                "last two evaluations (off: held)"})
    picard_stride: int = field(default=1, metadata={"help": "--rollout picard: a warm sweep evaluates every k-th "
                                                            "step, rotating; the others keep their last evaluation "
                                                            "moved along its secant slope (1: every step)"})
    preset: Optional[str] = field(default=None, metadata={"help": "named settings: paper (the SDO authors' scripts: DDIM, "
                                                                  "--steps 50 --warmup 45 --lr 0.01 --betas 0.9 0.9, no "
                                                                  "prior); options you give win",
                                                          "choices": list(PRESETS)})

    def overlays(self) -> dict[str, Any]:
        """The values :meth:`resolved` gives the options the user did not set: the preset's."""
        return dict(PRESETS[self.preset]) if self.preset is not None else {}

    def resolved(self, given: Optional[Collection[str]] = None) -> "LatentConfig":
        """This config with :meth:`overlays` for the options not in ``given`` (the command line's;
        without it, the options still at their defaults): see :func:`~shortcut_diffusion.options.groups.overlay`."""
        return overlay(self, self.overlays(), given)

    @property
    def batch_size(self) -> int:
        if self.batch is not None:
            return self.batch
        return INVERT_BATCH if self.init.startswith("invert:") else NOISE_BATCH

    def picard_settings(self) -> Any:
        """The ``--picard-*`` options as :class:`~shortcut_diffusion.gradients.picard.PicardSettings`."""
        from shortcut_diffusion.gradients.picard import PicardSettings

        return PicardSettings(sweeps=self.picard_sweeps, tol=self.picard_tol, every=self.picard_every,
                              check=self.picard_check, chunk=self.picard_chunk,
                              extrapolate=self.picard_extrapolate, secant=self.picard_secant,
                              stride=self.picard_stride)

    def _check(self) -> None:
        from shortcut_diffusion.gradients import get_method
        from shortcut_diffusion.gradients.picard import with_rollout
        from shortcut_diffusion.tasks.latent.optimize import (check_latent_options, check_moves_latent,
                                                              default_prior_weight)

        if self.init != "noise" and not self.init.startswith("invert:"):
            raise UsageError(f"--init must be noise or invert:REF, got {self.init!r}")
        optimizes_noise = self.warmup == 0 and self.init == "noise"
        prior = default_prior_weight(self.prior_weight, optimizes_noise)
        check_latent_options(steps=self.steps, warmup=self.warmup, iters=self.iters, lr=self.lr,
                             batch=self.batch_size, prior_weight=prior, proximity_weight=self.proximity_weight,
                             optimizes_noise=optimizes_noise, betas=self.betas, clip_grad=self.clip_grad or None)
        method = get_method(self.estimator)  # the spec, before any work (the schedule: once the model is loaded)
        method.check_task("latent")
        check_moves_latent(method, self.steps - self.warmup)
        with_rollout(method, self.rollout, self.picard_settings())
        if self.grid_every < 0:
            raise UsageError(f"--grid-every must be >= 0, got {self.grid_every}")
        if not math.isfinite(self.select_min_reward):
            raise UsageError(f"--select-min-reward must be finite, got {self.select_min_reward}")


@dataclass
class DemoConfig(LatentConfig):
    """``sdo demo``: ``sdo latent`` with its defaults, the reward averaged over translated views
    (without them a few of the 7s fool the classifier more than they look like 7s: the held-out
    judge reads 14 of 16 as 7, against 16 of 16 with them), 40 iterations, each sample keeping its
    iterate nearest to the model's own 7s among those where the classifier gives 7 at least 90%
    (``--select own-samples``: see docs/latent.md), written to ``runs/demo``."""

    reward_augment: list[str] = redefault(RewardOptions, "reward_augment", ["translation"])
    select: str = redefault(LatentConfig, "select", "own-samples")
    iters: int = redefault(LatentConfig, "iters", 40)
    out: str = redefault(RunOptions, "out", "runs/demo")

    def overlays(self) -> dict[str, Any]:
        """On ``moving-digits``, :data:`MOVING_DEMO`; a ``--preset`` over it."""
        return {**(MOVING_DEMO if self.model == "moving-digits" else {}), **super().overlays()}


MOVING_DEMO: dict[str, Any] = {"cond": ["1:right", "1:left", "1:down", "1:up"], "reward_augment": [], "steps": 20,
                               "lr": 0.05, "select_min_reward": -0.001, "out": "runs/demo-moving"}
"""``sdo demo --model moving-digits``: moving 1s in each direction turned into moving 7s, every
frame scored by ``digit-class:7`` (no translated views: the frames are cropped around the digit),
20 DDIM steps and Adam lr 0.05 (at the digits demo's 0.15 the judges other than the reward's
family read fewer of the 7s), each video keeping its iterate nearest the model's own 7s among
those whose reward (the mean of the frames' log-probabilities of 7) reached -0.001, where the
digits demo takes -0.1: the judges read more of the videos as 7 in every frame the higher the
reward the selection asks for (docs/video.md). The run takes about a minute of one CPU thread."""
