"""shortcut-diffusion: optimize diffusion sampling against differentiable objectives.

The core is one sampling loop (:func:`sample`); a gradient method (:mod:`shortcut_diffusion.gradients`,
SDO's one-step shortcut among them) decides what the backward pass through it sees.
"""

from .errors import UsageError
from .gradients import ESTIMATORS, METHODS, GradientEstimator, GradientMethod, get_estimator, get_method
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
    "GradientMethod",
    "METHODS",
    "Mode",
    "Plan",
    "Precision",
    "SampleOutput",
    "UsageError",
    "generate",
    "get_estimator",
    "get_method",
    "load_model",
    "make_scheduler",
    "sample",
]
