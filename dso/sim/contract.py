"""The oracle contract: settings in, one ``Verdict`` type out; oracles are chosen by name in config.

    oracle = make_oracle(settings.sim)       # settings.sim.oracle names it ("standing")
    verdict = oracle.simulate(occupancy)     # never raises for bad input: a failure Verdict instead
    verdicts = oracle.simulate_batch(items)  # in input order, over a process pool that survives bad items

Every consumer of the loop (simulator workers, broker records, stats, metrics, the
API and the console) reads the ``Verdict`` an oracle returns, unchanged; its
``outcome`` is the one classification (stable / unstable / invalid / error).

To add an oracle: write a class with ``name``, ``__init__(settings)``, ``simulate``
and ``simulate_batch``, add it to ``ORACLES`` and its name to ``SimSettings.oracle``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from dso.config import SimSettings
from dso.sim.inputs import SimInput
from dso.sim.verdict import Verdict


@runtime_checkable
class Oracle(Protocol):
    """A physical property judged by simulation, for one input or a batch."""

    name: str
    settings: SimSettings

    def simulate(self, item: SimInput) -> Verdict:
        """The verdict on one input, in-process; failures come back as failure verdicts, not exceptions."""
        ...

    def simulate_batch(self, items: Sequence[SimInput], workers: int | None = None) -> list[Verdict]:
        """Verdicts in input order (``workers``: None -> settings.workers, 0 -> one per CPU core)."""
        ...


class StandingOracle:
    """Released upright at rest on flat ground, does it end within ``tilt_threshold_deg`` of vertical?"""

    name = "standing"

    def __init__(self, settings: SimSettings | None = None) -> None:
        self.settings = settings or SimSettings()

    def simulate(self, item: SimInput) -> Verdict:
        from dso.sim.oracle import simulate  # MuJoCo loads on first use, not on import

        return simulate(item, self.settings)

    def simulate_batch(self, items: Sequence[SimInput], workers: int | None = None) -> list[Verdict]:
        from dso.sim.batch import label_batch

        return label_batch(items, self.settings, workers=workers)


def _robust_standing(settings: SimSettings) -> Oracle:
    from dso.sim.robust import RobustStandingOracle  # MuJoCo loads on first use, not on import

    return RobustStandingOracle(settings)


ORACLES: dict[str, Callable[[SimSettings], Oracle]] = {
    StandingOracle.name: StandingOracle,
    "robust_standing": _robust_standing,  # dso.sim.robust: stands flat and on slopes of robust_tilt_deg
}


def make_oracle(settings: SimSettings | None = None) -> Oracle:
    """The oracle ``settings.oracle`` names, configured with ``settings``."""
    settings = settings or SimSettings()
    try:
        factory = ORACLES[settings.oracle]
    except KeyError:
        raise ValueError(f"unknown oracle {settings.oracle!r}; known: {', '.join(sorted(ORACLES))}") from None
    return factory(settings)
