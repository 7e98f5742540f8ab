"""DSO shapes."""
