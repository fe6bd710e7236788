"""Every way to get a gradient through sampling, behind one interface and one registry.

``get_method("truncated:k=1")`` builds a method from a spec ``name[:key=value,...]`` (the
``--estimator`` flag of every command); :func:`as_method` also takes a ready method, a
:class:`~shortcut_diffusion.sampling.loop.Plan`, a list of plans or ``None``. The interface is
:class:`~.base.GradientMethod` (see :mod:`.base`); each method is a small module citing its paper:

- :mod:`.plans`: full, checkpointed, truncated (DRaFT-K), alignprop, refl, drtune, sdo;
- :mod:`.recomputed`: adjoint (AdjointDPM), doodl (DOODL through EDICT);
- :mod:`.cached`: the cached-rollout form (``sdo:rollout=cached``);
- :mod:`.surrogate`: surrogate trajectories on a cached rollout: leapalign, flowbp-sparse,
  flowbp-bridge, flowbp-lagrange, draft-lv, direct-align;
- :mod:`.adjoint_matching`: Adjoint Matching, a fine-tuning loss of its own on the memoryless chain
  (:mod:`.memoryless`), returned through :meth:`~.base.GradientMethod.training_loss`.

Every per-step plan also takes ``seed=`` (its own random stream) and ``checkpoint=1``
(checkpoint the steps whose network graph is kept).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Union

import torch

from shortcut_diffusion.options.parsing import parse_scalar
from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.sampling.loop import Plan, PlanSource
from shortcut_diffusion.gradients.base import FixedPlans, GradientMethod, Sampling, loss_weighted
from shortcut_diffusion.gradients.plans import (AlignProp, Checkpointed, DRTune, Full, GradientEstimator, ReFL, SDO,
                                                Truncated)
from shortcut_diffusion.gradients.recomputed import DOODL, Adjoint, RecomputedMethod
from shortcut_diffusion.gradients.surrogate import (Bridge, DirectAlign, DRaFTLV, Lagrange, LeapAlign, Sparse,
                                                    SurrogateMethod)
from shortcut_diffusion.gradients.adjoint_matching import AdjointMatching

METHODS: dict[str, type[GradientMethod]] = {
    cls.name: cls for cls in (Full, Checkpointed, Truncated, AlignProp, ReFL, SDO, DRTune, Adjoint, DOODL, LeapAlign,
                              Sparse, Bridge, Lagrange, DRaFTLV, DirectAlign, AdjointMatching)
}
"""Every method by name: the choices of ``--estimator``."""


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name[:key=value,...]`` into the name and its options (each key once)."""
    name, _, args = str(spec).partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, args.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"estimator option {item!r} in {spec!r} must look like key=value")
        if key.strip() in options:
            raise UsageError(f"estimator option {key.strip()} is given twice in {spec!r}; give it once")
        options[key.strip()] = parse_scalar(value.strip())
    return name, options


def get_method(spec: Union[str, GradientMethod], **overrides: Any) -> GradientMethod:
    """A method from ``name`` or ``name:key=value,...`` (a method passes through). ``overrides``
    (``seed=``) apply where the method takes them."""
    if isinstance(spec, GradientMethod):
        return spec
    name, options = parse_spec(spec)
    if name not in METHODS:
        raise UsageError(f"unknown estimator {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    if options and not accepted:
        raise UsageError(f"{name} takes no options, got {spec!r}")
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UsageError(f"estimator {name!r} has no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    options.update({k: v for k, v in overrides.items() if k in accepted})
    return cls(**options)


def as_method(source: Union[str, GradientMethod, PlanSource], **overrides: Any) -> GradientMethod:
    """What :func:`~shortcut_diffusion.tasks.generate.generate` samples with: a method, a spec, or the
    loop's own plan sources (a Plan, a list of plans, an object with ``plan(steps)``, or ``None``
    for recording every step)."""
    if isinstance(source, GradientMethod):
        return source
    if isinstance(source, str):
        return get_method(source, **overrides)
    return FixedPlans(source)


def unmetered(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` with what it saves for backward hidden from an enclosing
    :class:`~shortcut_diffusion.meters.SavedTensorMeter`."""

    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            return fn(x)

    return call


get_estimator = get_method
"""The name the library has used for :func:`get_method`."""
ESTIMATORS = METHODS

__all__ = ["ESTIMATORS", "METHODS", "AlignProp", "Adjoint", "Checkpointed", "DOODL", "DRTune", "FixedPlans", "Full",
           "GradientEstimator", "GradientMethod", "Plan", "ReFL", "RecomputedMethod", "SDO", "Sampling", "Truncated",
           "LeapAlign", "Sparse", "Bridge", "Lagrange", "DRaFTLV", "SurrogateMethod", "DirectAlign", "AdjointMatching",
           "loss_weighted",
           "as_method", "get_estimator", "get_method", "parse_spec", "unmetered"]
