"""DSO actors."""
