"""The embedded testbed: real handwritten digits, a trained diffusion model and classifier."""

from .model import BUNDLED, DigitsModel, load_digits_model

__all__ = ["BUNDLED", "DigitsModel", "load_digits_model"]
