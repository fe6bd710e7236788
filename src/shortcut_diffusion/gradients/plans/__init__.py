"""The per-step plans: each decides, per sampling step, what autograd records in the one loop.

One file per method, each citing its paper; :class:`.base.GradientEstimator` is what they share.
"""

from __future__ import annotations

from shortcut_diffusion.gradients.plans.alignprop import AlignProp
from shortcut_diffusion.gradients.plans.base import Drawn, GradientEstimator
from shortcut_diffusion.gradients.plans.checkpointed import Checkpointed
from shortcut_diffusion.gradients.plans.drtune import DRTune
from shortcut_diffusion.gradients.plans.full import Full
from shortcut_diffusion.gradients.plans.refl import ReFL
from shortcut_diffusion.gradients.plans.sdo import SDO
from shortcut_diffusion.gradients.plans.truncated import Truncated

__all__ = ["AlignProp", "Checkpointed", "DRTune", "Drawn", "Full", "GradientEstimator", "ReFL", "SDO", "Truncated"]
