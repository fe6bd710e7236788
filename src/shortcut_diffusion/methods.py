"""The gradient methods that are not per-step plans, behind the same ``--estimator`` flag.

``adjoint`` (AdjointDPM, Pan et al., NeurIPS 2023, arXiv 2307.10711; :mod:`.adjoint`) and ``doodl``
(DOODL, Wallace et al., ICCV 2023, arXiv 2303.13703, through EDICT's sampler; :mod:`.edict`)
sample without a graph, then run backward one step at a time, recomputing each state instead of
storing it: by DDIM inversion (the adjoint, approximate) or by EDICT's exact inverse (DOODL). The
memory is one step's graph whatever N. Neither is a :class:`~shortcut_diffusion.estimators.base.Plan`
over the model's scheduler: each brings its own sampler, DDIM (eta 0) or EDICT, on the noise
schedule of the scheduler it is given, so a diffusion (epsilon or v) model without clipping is
required. Both optimize latents (``sdo latent --estimator adjoint``) and show up in ``sdo
gradcheck`` (latent, cond and weights targets) and ``sdo bench``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch

from .adjoint import adjoint_gradient, ddim_sample
from .edict import RecomputedGradient, doodl_gradient, edict_sample, edict_schedule, renormalize
from .errors import UsageError
from .estimators import GradientEstimator, get_estimator


@dataclass(frozen=True)
class RecomputedMethod:
    name: str
    sampler: str
    """The chain it samples and differentiates: ``ddim`` or ``edict``."""
    paper: str

    @property
    def spec(self) -> str:
        return self.name

    def plan(self, steps: int) -> None:
        """Range checks, as an estimator's ``plan`` (any N works)."""
        if steps < 1:
            raise UsageError(f"{self.name} needs at least one step, got {steps}")

    def check(self, scheduler: Any, steps: int) -> None:
        """Refuse, before any work, a scheduler this method's sampler cannot follow."""
        edict_schedule(scheduler, steps)

    def sample(self, denoiser: Callable, scheduler: Any, z: torch.Tensor, *, steps: int, cond: Any = None) -> torch.Tensor:
        """The final latent of this method's sampler from ``z`` (records a graph if grad is on)."""
        if self.sampler == "edict":
            return edict_sample(denoiser, scheduler, z, steps=steps, cond=cond)[0]
        return ddim_sample(denoiser, scheduler, z, steps=steps, cond=cond)

    def gradient(self, denoiser: Callable, scheduler: Any, z: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor],
                 *, steps: int, cond: Any = None, params: Sequence[torch.Tensor] = ()) -> RecomputedGradient:
        fn = doodl_gradient if self.sampler == "edict" else adjoint_gradient
        return fn(denoiser, scheduler, z, loss, steps=steps, cond=cond, params=params)

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """After each update: DOODL puts the noise back on the Gaussian shell; the adjoint does not
        (it keeps the noise there with the chi prior of every other estimator)."""
        return renormalize(z) if self.sampler == "edict" else z

    @property
    def uses_prior(self) -> bool:
        return self.sampler != "edict"


METHODS = {
    "adjoint": RecomputedMethod("adjoint", "ddim", "AdjointDPM, arXiv 2307.10711"),
    "doodl": RecomputedMethod("doodl", "edict", "DOODL, arXiv 2303.13703"),
}


def get_gradient_method(spec: Union[str, GradientEstimator, RecomputedMethod],
                        **overrides: Any) -> Union[GradientEstimator, RecomputedMethod]:
    """An estimator (``name[:key=value,...]``) or one of :data:`METHODS`."""
    if isinstance(spec, RecomputedMethod):
        return spec
    name, _, args = str(spec).partition(":") if isinstance(spec, str) else ("", "", "")
    if name in METHODS:
        if args:
            raise UsageError(f"{name} takes no options, got {spec!r}")
        return METHODS[name]
    return get_estimator(spec, **overrides)


def unmetered(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` with what it saves for backward hidden from an enclosing
    :class:`~shortcut_diffusion.diagnostics.SavedTensorMeter` (decode and reward are not the
    sampling graph, and every estimator is measured without them)."""

    def call(x: torch.Tensor) -> torch.Tensor:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            return fn(x)

    return call


__all__ = ["METHODS", "RecomputedMethod", "get_gradient_method", "unmetered"]
