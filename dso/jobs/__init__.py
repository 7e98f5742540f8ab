"""DSO jobs."""
