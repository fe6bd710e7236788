"""Option groups shared by the commands, defined once and composed into each command's config.

``LatentConfig = (ModelOptions, SamplingOptions, ConditionOptions, RewardOptions, OptimizerOptions,
RunOptions) + its own fields``, and so on: a shared option has one name, one type, one help text
and one check everywhere. A command that needs another default redeclares the field with
:func:`redefault`, which keeps its help and choices. :meth:`Options.check` runs every group's
``_check`` before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

from shortcut_diffusion.options.choices import DTYPES, SCHEDULERS, TRACKERS, check_frames
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.io.tracking import check_installed


def redefault(owner: type, name: str, default: Any, help: Optional[str] = None) -> Any:
    """The field ``name`` of the option group ``owner`` with another default (same help, unless
    ``help`` words it for the command, and the same choices)."""
    metadata = owner.__dataclass_fields__[name].metadata
    if help is not None:
        metadata = {**metadata, "help": help}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def overlay(config: Any, values: dict[str, Any], given: Optional[Collection[str]] = None) -> Any:
    """``config`` with ``values`` (a preset's, a mode's defaults) for the options the user did not
    set: those not in ``given`` (the options on the command line), or, without it (the API), those
    still at their defaults, so there a value set equal to its default takes the preset's.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     lr: float = 0.15
    ...     steps: int = 50
    >>> overlay(C(lr=0.15), {"lr": 0.05, "steps": 20}, given={"lr"})
    C(lr=0.15, steps=20)
    >>> overlay(C(lr=0.15), {"lr": 0.05, "steps": 20})
    C(lr=0.05, steps=20)
    """
    if given is None:
        defaults = type(config)()
        given = {name for name in values if getattr(config, name) != getattr(defaults, name)}
    return dataclasses.replace(config, **{k: v for k, v in values.items() if k not in given})


def check_number(option: str, value: Optional[float], *, low: Optional[float] = None, strict: bool = False,
                 high: Optional[float] = None) -> None:
    """``value`` (when given) is finite and within ``[low, high]`` (``(low, ...`` when ``strict``)."""
    if value is None:
        return
    if isinstance(value, bool) or not math.isfinite(value):
        raise UsageError(f"{option} must be a finite number, got {value}")
    if low is not None and (value < low or (strict and value == low)):
        raise UsageError(f"{option} must be {'>' if strict else '>='} {low:g}, got {value:g}")
    if high is not None and value > high:
        raise UsageError(f"{option} must be <= {high:g}, got {value:g}")


MAX_SEED = 2**32 - 1
"""Seeds are 32-bit (what torch, NumPy and Python generators all take, with room for seed + k)."""
MAX_GUIDANCE = 1000.0
"""Classifier-free guidance scales in use are below 30; far larger ones overflow the guided noise
prediction into non-finite samples."""
MAX_REWARD_VIEWS = 256
"""Each view is a copy of every image through the reward: beyond a few hundred the average barely
changes while time and memory grow linearly."""


def check_seed(option: str, value: int) -> None:
    """A seed is an integer in ``0..MAX_SEED``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise UsageError(f"{option} must be an integer in 0..{MAX_SEED}, got {value}")


class Options:
    def check(self) -> None:
        """Every group's checks, before any work starts."""
        for cls in reversed(type(self).__mro__):
            own = cls.__dict__.get("_check")
            if own is not None:
                own(self)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ModelOptions(Options):
    model: str = field(default="digits", metadata={"help": "built-in model (digits, digits-flow, toy, sd15-random[:RES]), a saved "
                                                           "testbed directory, or a diffusers pipeline (directory or hub id)"})
    dtype: str = field(default="fp32", metadata={"help": "precision: frozen weights in this dtype, the forward under "
                                                          "autocast, optimized tensors kept in fp32; fp16 scales the loss",
                                                  "choices": list(DTYPES)})
    height: Optional[int] = field(default=None, metadata={"help": "image height for pipelines (default: the model's)"})
    width: Optional[int] = field(default=None, metadata={"help": "image width for pipelines (default: the model's)"})
    frames: Optional[int] = field(default=None, metadata={"help": "video pipelines: frames per video (default: the model's)"})
    image: Optional[str] = field(default=None, metadata={"help": "image-to-video pipelines: the conditioning image "
                                                                 "(encoded once, never optimized)"})
    negative_prompt: Optional[str] = field(default=None, metadata={"help": "negative prompt (the unconditional branch of CFG)"})
    guidance: Optional[float] = field(default=None, metadata={"help": "guidance scale (default: the model's)"})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N or auto"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch CPU threads (default: OMP_NUM_THREADS when set, "
                                                                   "else 1 for the bundled small models, torch's default otherwise)"})

    def _check(self) -> None:
        check_number("--guidance", self.guidance, low=0, high=MAX_GUIDANCE)
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if self.frames is not None and self.frames < 1:
            raise UsageError(f"--frames must be >= 1, got {self.frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value < 8:
                raise UsageError(f"--{name} must be at least 8 pixels, got {value}")

    def load_options(self) -> dict[str, Any]:
        """What :func:`shortcut_diffusion.load_model` takes from these options."""
        return {"dtype": self.dtype, "height": self.height, "width": self.width,
                "guidance_scale": self.guidance, "negative_prompt": self.negative_prompt, "num_frames": self.frames,
                "image": self.image}


@dataclass
class MemoryOptions(Options):
    offload_text_encoders: bool = field(default=True, metadata={"help": "pipelines: move the text encoders to the CPU once the prompts are encoded"})
    vae_slicing: bool = field(default=False, metadata={"help": "pipelines: decode one image at a time"})
    vae_checkpointing: bool = field(default=False, metadata={"help": "pipelines: gradient checkpointing in the VAE decoder"})
    vae_tiling: bool = field(default=False, metadata={"help": "pipelines: decode in overlapping spatial tiles (the VAE's own "
                                                              "tiling; refused where the VAE has none)"})
    decode_chunk: int = field(default=0, metadata={"help": "video pipelines with a per-frame VAE (AnimateDiff): decode this "
                                                           "many frames at a time, each chunk checkpointed (0: all at once)"})
    attention_slicing: bool = field(default=False, metadata={"help": "pipelines: attention slicing (less memory, slower)"})

    def _check(self) -> None:
        if self.decode_chunk < 0:
            raise UsageError(f"--decode-chunk must be >= 0 (0: all frames at once), got {self.decode_chunk}")


@dataclass
class SamplingOptions(Options):
    scheduler: str = field(default="auto", metadata={"help": "scheduler (auto: the model's own)", "choices": ["auto", *SCHEDULERS]})
    steps: int = field(default=50, metadata={"help": "sampling steps"})
    eta: Optional[float] = field(default=None, metadata={"help": "DDIM eta (stochastic DDIM when > 0)"})
    compile: bool = field(default=False, metadata={"help": "run the network calls that record no graph (detached steps, "
                                                            "warm-up, evaluation) through torch.compile; kept steps stay eager"})

    def _check(self) -> None:
        if self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        check_number("--eta", self.eta, low=0, high=1)  # 0: deterministic DDIM, 1: DDPM's noise

    @property
    def step_kwargs(self) -> dict[str, Any]:
        return {} if self.eta is None else {"eta": self.eta}


@dataclass
class ConditionOptions(Options):
    cond: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "class indices (or all), cycled over the batch (class-conditional models)"})
    prompt: list[str] = field(default_factory=list, metadata={"help": "prompts, cycled over the batch (text-to-image pipelines)"})
    prompts_file: Optional[str] = field(default=None, metadata={"help": "file with one condition (class or prompt) per line (replaces --cond / --prompt)"})

    def _check(self) -> None:
        if self.prompts_file is not None and not Path(self.prompts_file).is_file():
            raise UsageError(f"--prompts-file {self.prompts_file} does not exist")

    def condition_items(self, condition_kind: str) -> tuple[list[str], str]:
        """The raw conditions for a model whose labels are ``condition_kind``, and their source."""
        if self.prompts_file:
            text = Path(self.prompts_file).read_text()
            return [line.strip() for line in text.splitlines() if line.strip()], f"--prompts-file {self.prompts_file}"
        given_cond = self.cond != type(self).__dataclass_fields__["cond"].default_factory()  # type: ignore[attr-defined]
        if condition_kind == "prompt":
            if given_cond:
                raise UsageError("--cond takes class indices, and this text-to-image model takes prompts: "
                                 "use --prompt instead")
            return list(self.prompt), "--prompt"
        if self.prompt:
            what = "class-conditional (use --cond)" if condition_kind == "class" else "unconditional"
            raise UsageError(f"--prompt is for text-to-image pipelines; this model is {what}")
        return [str(c) for c in self.cond], "--cond"


@dataclass
class RewardOptions(Options):
    reward: str = field(default="digit-match", metadata={"help": "reward: name[:arg], a weighted sum SPEC=W,SPEC=W, or FILE.py:NAME "
                                                                 "(runs that Python file: use only files you trust)"})
    reward_augment: list[str] = field(default_factory=list, metadata={"help": "average the reward over random views: crop, cutout, translation, color"})
    reward_views: int = field(default=4, metadata={"help": "views per image with --reward-augment"})
    reward_frames: Optional[str] = field(default=None, metadata={"help": "video models: the frames an image reward "
                                                                         "scores, averaged: all, first, middle, last, "
                                                                         "random:K or stride:S (default: all)"})
    eval_reward: list[str] = field(default_factory=list, metadata={"help": "a held-out reward (same SPEC forms as --reward), "
                                                                          "scored on the same samples and reported as "
                                                                          "eval_reward/SPEC, never optimized; repeatable",
                                                                  "repeatable": True})
    allow_code: bool = field(default=False, metadata={"help": "let --reward classifier:MODULE:CLASS import the Python "
                                                              "module MODULE, which runs its code (use only code you trust)"})

    def _check(self) -> None:
        if not 1 <= self.reward_views <= MAX_REWARD_VIEWS:
            raise UsageError(f"--reward-views must be in 1..{MAX_REWARD_VIEWS} (each view sends a copy of every "
                             f"image through the reward), got {self.reward_views}")
        if self.reward_frames is not None:
            check_frames(self.reward_frames)
        repeated = sorted({spec for spec in self.eval_reward if self.eval_reward.count(spec) > 1})
        if repeated:
            raise UsageError(f"--eval-reward {repeated[0]} is given more than once")


@dataclass
class OptimizerOptions(Options):
    lr: Optional[float] = field(default=None, metadata={"help": "learning rate"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "Adam betas"})
    clip_grad: Optional[float] = field(default=None, metadata={"help": "clip the gradient norm to this value (0: no clipping)"})

    def _check(self) -> None:
        check_optimizer(self.lr, self.betas, self.clip_grad)


def check_optimizer(lr: Optional[float], betas: Sequence[float], clip_grad: Optional[float] = None) -> None:
    """The optimizer options (``--lr``, ``--betas``, ``--clip-grad``; 0 and None: no clipping),
    for the option groups and the library functions alike."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr: the learning rate must be > 0 and finite, got {lr}")
    if len(betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in betas):
        raise UsageError(f"--betas needs two numbers in [0, 1), got {' '.join(map(str, betas))}")
    check_number("--clip-grad", clip_grad, low=0)


@dataclass
class RunOptions(Options):
    estimator: str = field(default="sdo", metadata={"help": "gradient estimator spec, name[:key=value,...] (full, checkpointed, "
                                                          "truncated, alignprop, refl, drtune, sdo; sdo latent also adjoint, doodl)"})
    batch: int = field(default=8, metadata={"help": "samples per batch"})
    seed: int = field(default=0, metadata={"help": "seed of the noise and the estimator's draws"})
    out: str = field(default="runs/out", metadata={"help": "run directory"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier run of this command in --out "
                                                              "(only the files sdo wrote are removed)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def _check(self) -> None:
        if self.batch is not None and self.batch < 1:
            raise UsageError(f"--batch must be >= 1, got {self.batch}")
        check_seed("--seed", self.seed)


@dataclass
class TrackingOptions(Options):
    report_to: str = field(default="none", metadata={"help": "also log the metrics, grids and config to an experiment "
                                                             "tracker, offline unless its own settings say otherwise "
                                                             "(files in OUT/tracking)", "choices": list(TRACKERS)})

    def _check(self) -> None:
        check_installed(self.report_to)
