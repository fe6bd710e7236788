"""Surrogate-trajectory methods: a cached rollout, then a short differentiable path built from it.

- :mod:`.chain`: the cached rollout in Euler coordinates (flow matching; DDIM with eta 0) and the
  latent connector;
- :mod:`.framework`: FlowBP's surrogate builder (active set, integration weights, bridge, reward input);
- :mod:`.leapalign`: LeapAlign (arXiv 2604.15311);
- :mod:`.flowbp`: FlowBP's Sparse, Bridge and Lagrange variants (arXiv 2606.11075);
- :mod:`.draft_lv`: DRaFT-LV (arXiv 2309.17400);
- :mod:`.direct_align`: Direct-Align, the method of SRPO (arXiv 2509.06942).
"""

from __future__ import annotations

from shortcut_diffusion.gradients.surrogate.base import SurrogateMethod
from shortcut_diffusion.gradients.surrogate.direct_align import DirectAlign
from shortcut_diffusion.gradients.surrogate.draft_lv import DRaFTLV
from shortcut_diffusion.gradients.surrogate.flowbp import Bridge, Lagrange, Sparse
from shortcut_diffusion.gradients.surrogate.leapalign import LeapAlign

__all__ = ["Bridge", "DirectAlign", "DRaFTLV", "Lagrange", "LeapAlign", "Sparse", "SurrogateMethod"]
