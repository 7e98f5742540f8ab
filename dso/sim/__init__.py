"""The stability oracle: geometry -> MuJoCo -> verdict (pure library: no Ray, Redis or HTTP).

    from dso.sim import make_oracle, simulate, label_batch, OraclePool, Verdict
    verdict = make_oracle(SimSettings()).simulate(occupancy_or_mesh_or_path)  # the oracle named in config
    verdict = simulate(occupancy_or_mesh_or_path, SimSettings())  # the standing oracle itself

Names are imported lazily, so that importing one light module (the verdict types,
the ``dso simulate`` command in ``dso.jobs.sim_cli``, ``dso --help``) does not load MuJoCo.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ORACLES": "dso.sim.contract",
    "Oracle": "dso.sim.contract",
    "StandingOracle": "dso.sim.contract",
    "RobustStandingOracle": "dso.sim.robust",
    "simulate_robust": "dso.sim.robust",
    "make_oracle": "dso.sim.contract",
    "OraclePool": "dso.sim.batch",
    "label_batch": "dso.sim.batch",
    "simulate": "dso.sim.oracle",
    "paper_settings": "dso.sim.presets",
    "reference_settings": "dso.sim.presets",
    "rotation_deg": "dso.sim.rotation",
    "tilt_deg": "dso.sim.rotation",
    "Outcome": "dso.sim.verdict",
    "SimStatus": "dso.sim.verdict",
    "StopReason": "dso.sim.verdict",
    "Verdict": "dso.sim.verdict",
    "InvalidInputError": "dso.sim.errors",
    "SimulationError": "dso.sim.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dso.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
