"""Full backpropagation through every sampling step (BPTT).

The exact gradient of the sampled image, at the cost of keeping every step's network graph in
memory. The baseline of direct noise optimization, e.g. DNO: Tang et al., "Inference-Time
Alignment of Diffusion Models with Direct Noise Optimization", 2024 (arXiv 2406.04312), and the
reference that DOODL (Wallace et al., "End-to-End Diffusion Latent Optimization Improves
Classifier Guidance", ICCV 2023, arXiv 2303.13703) makes memory-efficient.
"""

from __future__ import annotations

from shortcut_diffusion.sampling.loop import Plan
from shortcut_diffusion.gradients.plans.base import GradientEstimator


class Full(GradientEstimator):
    name = "full"

    def plan(self, steps: int) -> Plan:
        return Plan.uniform(self.grad_mode, steps)
