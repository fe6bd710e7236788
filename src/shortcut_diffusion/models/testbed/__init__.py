"""The embedded testbed: real handwritten digits, a trained diffusion model and classifier."""

from shortcut_diffusion.lazy import exports

__getattr__ = exports(__name__, {"BUNDLED": ".model", "BUNDLED_FLOW": ".model", "DigitsModel": ".model", "load_digits_model": ".model"})

__all__ = ["BUNDLED", "BUNDLED_FLOW", "DigitsModel", "load_digits_model"]
