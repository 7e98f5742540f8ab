"""Named oracle configurations besides the default: the paper's, and a high-fidelity reference."""

from __future__ import annotations

from dso.config import SimSettings


def paper_settings(base: SimSettings | None = None) -> SimSettings:
    """The paper code's simulation: one convex hull, Euler, 1 ms steps for a fixed 10 s, MuJoCo default friction."""
    base = base or SimSettings()
    return base.model_copy(
        update=dict(
            mode="hull",
            integrator="euler",
            timestep=0.001,
            max_time=10.0,
            early_stop=False,
            friction=(1.0, 0.005, 0.0001),
        )
    )


def reference_settings(base: SimSettings | None = None) -> SimSettings:
    """High-fidelity run on the exact geometry: 0.25 ms steps for a fixed 20 s, no early stop, no pruning."""
    base = base or SimSettings()
    return base.model_copy(
        update=dict(
            mode="boxes",
            timestep=0.00025,
            max_time=20.0,
            early_stop=False,
            prune_collision_boxes=False,
            item_timeout_s=max(base.item_timeout_s, 600.0),
        )
    )
