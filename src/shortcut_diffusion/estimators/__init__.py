"""Gradient estimators: each decides, per sampling step, what autograd records.

``get_estimator("truncated:k=1")`` builds one from a spec string ``name[:key=value,...]``; every
estimator also takes ``seed=`` (its own random stream) and ``checkpoint=1`` (checkpoint the steps
whose network graph is kept).
"""

from __future__ import annotations

import inspect
from typing import Union

from ..config import parse_scalar
from ..errors import UsageError
from .alignprop import AlignProp
from .base import GradientEstimator
from .checkpointed import Checkpointed
from .drtune import DRTune
from .full import Full
from .refl import ReFL
from .sdo import SDO
from .truncated import Truncated

ESTIMATORS: dict[str, type[GradientEstimator]] = {
    cls.name: cls for cls in (Full, Checkpointed, Truncated, AlignProp, ReFL, SDO, DRTune)
}

__all__ = [
    "ESTIMATORS",
    "AlignProp",
    "Checkpointed",
    "DRTune",
    "Full",
    "GradientEstimator",
    "ReFL",
    "SDO",
    "Truncated",
    "get_estimator",
]


def get_estimator(spec: Union[str, GradientEstimator], **overrides) -> GradientEstimator:
    """An estimator from ``name`` or ``name:key=value,...`` (an estimator passes through)."""
    if isinstance(spec, GradientEstimator):
        return spec
    name, _, args = str(spec).partition(":")
    if name not in ESTIMATORS:
        raise UsageError(f"unknown estimator {name!r}; choose one of {', '.join(ESTIMATORS)}")
    cls = ESTIMATORS[name]
    kwargs = {}
    for item in filter(None, args.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"estimator option {item!r} in {spec!r} must look like key=value")
        if key.strip() in kwargs:
            raise UsageError(f"estimator option {key.strip()} is given twice in {spec!r}; give it once")
        kwargs[key.strip()] = parse_scalar(value.strip())
    kwargs.update(overrides)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise UsageError(
            f"estimator {name!r} has no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}"
        )
    return cls(**kwargs)
