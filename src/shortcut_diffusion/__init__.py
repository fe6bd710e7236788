"""shortcut-diffusion: optimize diffusion sampling against differentiable objectives.

The core is one sampling loop (:func:`sample`) whose per-step autograd behaviour is chosen by a
gradient estimator (:mod:`shortcut_diffusion.estimators`), SDO's one-step shortcut among them.
"""

from .errors import UsageError
from .estimators import ESTIMATORS, GradientEstimator, get_estimator
from .sampling import Mode, Plan, SampleOutput, sample
from .schedulers import SCHEDULERS, make_scheduler

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "SCHEDULERS",
    "GradientEstimator",
    "Mode",
    "Plan",
    "SampleOutput",
    "UsageError",
    "get_estimator",
    "make_scheduler",
    "sample",
]
