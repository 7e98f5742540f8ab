"""DSO learner."""
