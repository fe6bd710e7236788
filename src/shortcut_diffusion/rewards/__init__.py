"""Rewards: differentiable callables ``reward(images, prompts=None) -> tensor[batch]``.

Higher is better. ``images`` are NCHW in [-1, 1]; ``prompts`` are the samples' conditions (class
indices on the testbed, prompt strings on text-to-image models). ``get_reward(spec)`` builds one:

- ``name[:arg]``: a reward of :data:`REWARDS`;
- ``SPEC=W,SPEC=W[,normalize=running]``: a weighted sum (:mod:`.combine`);
- ``relative:SPEC,negative=...``: SRPO's relative reward, positive minus negative condition (:mod:`.relative`);
- ``PATH.py:NAME``: a reward from the user's file, which runs that file (:mod:`.user`).

``augment=[...]`` (with ``views``) averages the reward over random differentiable views.

On a video model (``shape`` is ``T x C x H x W``) an image reward scores the frames ``frames``
chooses (default: all) and a video reward (``video = True``) the whole ``B x T x C x H x W``
video (:mod:`.video`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.rewards.basic import Ink, NegMSE
from shortcut_diffusion.rewards.classifier import ClassifierReward
from shortcut_diffusion.rewards.clip import Aesthetic, ClipScore, ClipStyle, PickScore
from shortcut_diffusion.rewards.combine import AUGMENTATIONS, Augmented, WeightedSum, parse_weighted
from shortcut_diffusion.rewards.compress import Compressibility
from shortcut_diffusion.rewards.contract import CheckedReward, check_not_meta, checked
from shortcut_diffusion.rewards.digits import Adversarial, DigitClass, DigitMatch, Style
from shortcut_diffusion.rewards.hps import HPSv2
from shortcut_diffusion.rewards.imagereward import ImageReward
from shortcut_diffusion.rewards.user import load_user_reward
from shortcut_diffusion.rewards.video import FrameReward, Temporal, is_video_reward

Reward = Callable[[torch.Tensor, Optional[list]], torch.Tensor]

REWARDS: dict[str, Callable[..., Reward]] = {
    "ink": Ink,
    "neg-mse": NegMSE,
    "digit-class": DigitClass,
    "digit-match": DigitMatch,
    "adversarial": Adversarial,
    "style": Style,
    "clip": ClipScore,
    "aesthetic": Aesthetic,
    "pickscore": PickScore,
    "hpsv2": HPSv2,
    "imagereward": ImageReward,
    "clip-style": ClipStyle,
    "compressibility": Compressibility,
    "classifier": ClassifierReward,
    "temporal": Temporal,
}

__all__ = ["AUGMENTATIONS", "REWARDS", "Adversarial", "Aesthetic", "Augmented", "ClassifierReward", "ClipScore",
           "ClipStyle", "Compressibility", "DigitClass", "DigitMatch", "HPSv2", "ImageReward", "Ink", "NegMSE",
           "PickScore", "Reward", "Style", "Temporal", "WeightedSum", "checked", "get_reward", "resolve_reward_spec"]


def resolve_reward_spec(spec: str, model: object) -> str:
    """``auto`` is ``digit-match`` on a model with the testbed's classifier, ``neg-mse`` otherwise."""
    if spec != "auto":
        return spec
    return "digit-match" if model.classifier is not None else "neg-mse"


def get_reward(spec: "str | Reward", augment: Optional[list] = None, views: int = 4, seed: int = 0,
               frames: Optional[str] = None, **context) -> Reward:
    """A reward from a spec (see the module docstring).

    ``context`` goes to the builders that use it: ``shape`` (the image shape), ``model`` (the
    loaded model; the testbed rewards take its classifier). ``augment`` (names from
    :data:`AUGMENTATIONS`) wraps the result in :class:`Augmented` with ``views`` views. ``frames``
    (``--reward-frames``) chooses the frames image rewards score on a video model.
    """
    video = _is_video(context.get("shape"))
    if frames is not None and not video:
        raise UsageError(f"--reward-frames {frames} applies to video models; this model makes images")
    if augment and video:
        raise UsageError("--reward-augment takes images; on a video model use --reward-frames instead")
    reward = _build(spec, frames=frames or "all", frame_seed=seed, **context)
    if augment:
        reward = Augmented(reward, augment, views=views, seed=seed)
    if isinstance(spec, str):
        user = Path(spec.rpartition(":")[0]).resolve() if ".py:" in spec else None
        reward = CheckedReward(reward, spec, user_file=user)
    return reward


def _is_video(shape: Optional[tuple]) -> bool:
    return shape is not None and len(shape) == 4


def _for_video(reward: Reward, shape: Optional[tuple] = None, frames: str = "all", frame_seed: int = 0,
               **context) -> Reward:
    """On a video model, an image reward scores the chosen frames; a video reward is as it is."""
    if not _is_video(shape) or is_video_reward(reward):
        return reward
    return FrameReward(reward, frames, seed=frame_seed)


def _build(spec: "str | Reward", **context) -> Reward:
    if callable(spec) and not isinstance(spec, str):
        return _for_video(spec, **context)
    spec = str(spec)
    if spec.startswith("relative:"):
        from shortcut_diffusion.rewards.relative import Relative

        return Relative.from_spec(spec, lambda inner: _build(inner, **context))
    weighted = parse_weighted(spec)
    if weighted is not None:
        terms, normalize = weighted
        return WeightedSum([(w, _build(s, **context)) for s, w in terms], normalize=normalize)
    if ".py:" in spec:
        return _for_video(_place(load_user_reward(spec), context.get("model")), **context)
    name, _, arg = spec.partition(":")
    if name not in REWARDS:
        raise UsageError(_unknown(spec, name))
    builder, shape = REWARDS[name], context.get("shape")
    if _is_video(shape) and not is_video_reward(builder):  # an image reward is built for one frame
        return _for_video(_place(builder.from_spec(arg, **{**context, "shape": shape[1:]}), context.get("model")),
                          **context)
    return _place(builder.from_spec(arg, **context), context.get("model"))


def _unknown(spec: str, name: str) -> str:
    """Why ``spec`` names no reward: a weight that is not a number, or an unknown name."""
    for item in spec.split(";") if ";" in spec else spec.split(","):
        term, eq, weight = item.rpartition("=")
        if eq and term.partition(":")[0] in REWARDS:
            try:
                float(weight)
            except ValueError:
                return f"reward {spec!r}: the weight {weight!r} of {term} is not a number (SPEC=WEIGHT)"
    return (f"unknown reward {name!r}; choose one of {', '.join(REWARDS)}, a weighted sum SPEC=W,SPEC=W, "
            "or FILE.py:NAME")


def _place(reward: Reward, model: object) -> Reward:
    """A reward with weights of its own (``.to``) goes to the device of the model it scores."""
    device = getattr(model, "device", None)
    if device is None or torch.device(device).type != "meta":
        check_not_meta(reward)
    if model is None or not isinstance(reward, torch.nn.Module) and not callable(getattr(reward, "to", None)):
        return reward
    moved = reward.to(model.device)
    return reward if moved is None else moved
