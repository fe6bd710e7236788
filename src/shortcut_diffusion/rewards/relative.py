"""SRPO's relative reward: the reward under a positive condition minus the reward under a negative one.

Shen et al. (SRPO, arXiv 2509.06942) score an image against a prompt augmented with a positive
control word and against the same prompt with a negative one, and train on the difference: what
the two prompts share (and what a reward model over-rewards regardless of the prompt) cancels.
``--reward "relative:SPEC,negative=WORD[,positive=WORD][,k=K]"``:

- prompt rewards (CLIP, PickScore, HPS, ...): ``(1 + k) r(x, "POSITIVE. prompt") - r(x, "NEGATIVE. prompt")``
  (the word and a full stop before the prompt, as the official code writes it; no positive word
  scores the prompt as given). ``k = 0`` is the paper's plain difference; the official code uses
  ``k`` from 0.1 to 0.25 over the timestep with one of its reward models (a constant here) and
  cycles its control words per step (one fixed pair here).
- class rewards (the digits testbeds): a class-contrast analogue of ours, ``(1 + k) r(x, y) - r(x, NEGATIVE)``
  with ``NEGATIVE`` a class index: the reward of the conditioned class minus that of a fixed other
  class (e.g. ``relative:digit-match,negative=8``).

The inner ``SPEC`` is any reward spec (its own options keep their commas); the options named above
are the last items of the spec.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from shortcut_diffusion.errors import UsageError

OPTIONS = ("negative", "positive", "k")


class Relative:
    name = "relative"

    def __init__(self, reward: Callable, negative: str, positive: str = "", k: float = 0.0):
        self.reward, self.negative, self.positive, self.k = reward, negative, positive, float(k)

    @staticmethod
    def split(spec: str) -> tuple[str, dict[str, str]]:
        """``relative:SPEC,key=value,...`` into the inner spec and the options at its end."""
        items = spec.partition(":")[2].split(",")
        options: dict[str, str] = {}
        while items and items[-1].partition("=")[0].strip() in OPTIONS and "=" in items[-1]:
            key, _, value = items.pop().partition("=")
            if key.strip() in options:
                raise UsageError(f"relative reward: {key.strip()} is given twice in {spec!r}")
            options[key.strip()] = value.strip()
        inner = ",".join(items)
        if not inner or "negative" not in options:
            raise UsageError(f"relative reward: write relative:SPEC,negative=... (got {spec!r})")
        return inner, options

    @classmethod
    def from_spec(cls, spec: str, build: Callable[[str], Callable]) -> "Relative":
        inner, options = cls.split(spec)
        try:
            k = float(options.get("k", 0.0))
        except ValueError:
            raise UsageError(f"relative reward: k={options['k']!r} must be a number") from None
        return cls(build(inner), options["negative"], options.get("positive", ""), k)

    def __call__(self, images: torch.Tensor, prompts: Any = None) -> torch.Tensor:
        if prompts is None:
            raise UsageError("relative reward scores the samples' conditions: give prompts or classes")
        if isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], str):
            return ((1 + self.k) * self.reward(images, [_word(self.positive, p) for p in prompts])
                    - self.reward(images, [_word(self.negative, p) for p in prompts]))
        try:
            negative = int(self.negative)
        except ValueError:
            raise UsageError(f"relative reward on class conditions needs negative=CLASS (an index), "
                             f"got {self.negative!r}") from None
        labels = torch.as_tensor(prompts)
        return (1 + self.k) * self.reward(images, labels) - self.reward(images, torch.full_like(labels, negative))


def _word(word: Optional[str], prompt: str) -> str:
    return f"{word}. {prompt}" if word else prompt
