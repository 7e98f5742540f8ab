"""DSO evaluate."""
