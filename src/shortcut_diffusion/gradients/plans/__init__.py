"""The per-step plans: each decides, per sampling step, what autograd records in the one loop.

One file per method, each citing its paper; :class:`.base.GradientEstimator` is what they share.
"""

from __future__ import annotations

from .alignprop import AlignProp
from .base import Drawn, GradientEstimator
from .checkpointed import Checkpointed
from .drtune import DRTune
from .full import Full
from .refl import ReFL
from .sdo import SDO
from .truncated import Truncated

__all__ = ["AlignProp", "Checkpointed", "DRTune", "Drawn", "Full", "GradientEstimator", "ReFL", "SDO", "Truncated"]
