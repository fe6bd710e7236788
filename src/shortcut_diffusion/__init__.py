"""shortcut-diffusion: optimize diffusion sampling against differentiable objectives.

The core is one sampling loop (:func:`sample`); a gradient method (:mod:`shortcut_diffusion.gradients`,
SDO's one-step shortcut among them) decides what the backward pass through it sees.
"""

from shortcut_diffusion.errors import UsageError
from shortcut_diffusion.lazy import exports
from shortcut_diffusion.version import __version__

# Imported on first use, so that ``import shortcut_diffusion.cli`` (``sdo --help``) needs no torch.
__getattr__ = exports(__name__, {
    **dict.fromkeys(["ESTIMATORS", "METHODS", "GradientEstimator", "GradientMethod", "get_estimator", "get_method"],
                    ".gradients"),
    "Generation": ".tasks.generate", "generate": ".tasks.generate", "load_model": ".models.loading",
    "DiffusionModel": ".models.base", "Precision": ".precision", "Mode": ".sampling.loop", "Plan": ".sampling.loop",
    "SampleOutput": ".sampling.loop", "sample": ".sampling.loop", "SCHEDULERS": ".sampling.schedulers", "make_scheduler": ".sampling.schedulers",
})

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
