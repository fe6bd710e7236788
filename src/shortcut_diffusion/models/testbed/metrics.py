"""Quality metrics on the testbed, all on the bundled classifier's features.

- ``digits_fd``: Frechet distance between Gaussian fits of the classifier's penultimate features
  of generated and real digits (the FID recipe with a digit classifier in place of Inception).
- ``conditional_accuracy``: how often the classifier recognises the class a sample was generated for.
- ``diversity``: mean pairwise Euclidean distance between the samples' features.
"""

from __future__ import annotations

import numpy as np
import torch

from shortcut_diffusion.models.testbed import data
from shortcut_diffusion.models.testbed.classifier import DigitClassifier


@torch.no_grad()
def features(classifier: DigitClassifier, images: torch.Tensor, batch: int = 1024) -> np.ndarray:
    device = next(classifier.parameters()).device
    chunks = [classifier.features(images[i : i + batch].to(device)).double().cpu() for i in range(0, len(images), batch)]
    return torch.cat(chunks).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) for feature rows ``a`` and ``b``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # The eigenvalues of S_a S_b (a product of PSD matrices) are real and non-negative; the trace
    # of its square root is the sum of their square roots.
    eig = np.linalg.eigvals(s_a @ s_b)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_sqrt)


def digits_fd(classifier: DigitClassifier, images: torch.Tensor, reference: str = "held_out",
              digits: "list[int] | None" = None) -> float:
    """digits-FD of ``images`` against a split of the real digits (held-out by default); ``digits``
    keeps only those classes of it (samples steered to one class against real digits of that class)."""
    real = data.load(reference)
    images_real = real.images if digits is None else real.images[torch.isin(real.labels, torch.tensor(digits))]
    return frechet_distance(features(classifier, images), features(classifier, images_real))


@torch.no_grad()
def conditional_accuracy(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    device = next(classifier.parameters()).device
    predicted = classifier(images.to(device)).argmax(1).cpu()
    return float((predicted == labels.cpu()).float().mean())


def diversity(classifier: DigitClassifier, images: torch.Tensor) -> float:
    f = torch.from_numpy(features(classifier, images))
    n = len(f)
    if n < 2:
        return 0.0
    d = torch.cdist(f, f)
    return float(d.sum() / (n * (n - 1)))


def ink(images: torch.Tensor) -> float:
    """Mean stroke mass on the data set's 0..16 scale (real digits: 4.9 on average)."""
    return float(((images.detach().float().cpu() + 1) * 8).mean())


def evaluate(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """digits-FD (against all held-out digits, and as ``class_fd`` against the held-out digits of
    the classes in ``labels``), accuracy, diversity (the mean over classes of the within-class
    spread) and mean ink."""
    classes = labels.unique().tolist()
    per_class = [diversity(classifier, images[labels == k]) for k in classes]
    return {
        "digits_fd": digits_fd(classifier, images),
        "class_fd": digits_fd(classifier, images, digits=classes),
        "accuracy": conditional_accuracy(classifier, images, labels),
        "diversity": float(np.mean(per_class)),
        "ink": ink(images),
    }
