"""The one scoring engine (items, steering conditions, prefix caches) and steering hooks/generation."""

from workbench.engine.steering import generate, steer

__all__ = ["generate", "steer"]
