"""DSO models."""
