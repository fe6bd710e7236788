"""Diffusers pipelines (SD 1.x/2.x, SDXL, SD3, Flux, pixel-space DDPM) as the engine's models."""

from .loading import load_pipeline, load_pipeline_model, looks_like_pipeline
from .model import FAMILIES, PipelineModel, family_of

__all__ = ["FAMILIES", "PipelineModel", "family_of", "load_pipeline", "load_pipeline_model", "looks_like_pipeline"]
