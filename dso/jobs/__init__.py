"""DSO jobs: every entry point (CLIs, the loop's runner, Ray jobs, experiments, result pages).

Jobs wire the pure libraries (models, shapes, sim, learner, evaluate) to Ray, Redis and
HTTP; the libraries never import them (import-linter contracts in pyproject.toml).
"""
