"""DSO broker."""
