"""DSO api."""
