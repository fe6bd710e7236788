"""Full backpropagation with gradient checkpointing of every network call.

The same gradient as :mod:`.full`, with each step's network activations recomputed during the
backward pass instead of stored (Chen et al., "Training Deep Nets with Sublinear Memory Cost",
2016, arXiv 1604.06174). This is how DRaFT (Clark et al., arXiv 2309.17400) and AlignProp
(Prabhudesai et al., arXiv 2310.03739) fit full-length backpropagation in memory. Only the network
call is recomputed; ``scheduler.step`` runs once, so scheduler state is never advanced twice.
"""

from __future__ import annotations

from shortcut_diffusion.gradients.plans.full import Full


class Checkpointed(Full):
    name = "checkpointed"

    def __init__(self, seed=0):
        super().__init__(seed=seed, checkpoint=True)

    @property
    def spec(self) -> str:
        return self.name
