"""DSO sim."""
