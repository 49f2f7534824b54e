"""Optimizer classes with torch.optim's names, arguments and defaults."""

from .adam import Adam, AdamW

__all__ = ["Adam", "AdamW"]
