"""Exceptions the oracle turns into non-ok verdicts."""


class InvalidInputError(ValueError):
    """The input cannot be simulated; the message says why (becomes status invalid_input)."""


class SimulationError(RuntimeError):
    """MuJoCo could not build or step the model (becomes status sim_error)."""
