"""shortcut-diffusion: optimize diffusion sampling against differentiable objectives.

The core is one sampling loop (:func:`sample`) whose per-step autograd behaviour is chosen by a
gradient estimator (:mod:`shortcut_diffusion.estimators`), SDO's one-step shortcut among them.
"""

from .errors import UsageError
from .estimators import ESTIMATORS, GradientEstimator, get_estimator
from .generation import Generation, generate
from .loading import load_model
from .models.base import DiffusionModel
from .precision import Precision
from .sampling import Mode, Plan, SampleOutput, sample
from .schedulers import SCHEDULERS, make_scheduler

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "SCHEDULERS",
    "DiffusionModel",
    "Generation",
    "GradientEstimator",
    "Mode",
    "Plan",
    "Precision",
    "SampleOutput",
    "UsageError",
    "generate",
    "get_estimator",
    "load_model",
    "make_scheduler",
    "sample",
]
