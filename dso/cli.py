"""The ``dso`` command. Each sub-command imports its stage lazily so ``dso --help`` stays fast."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Direct Simulation Optimization for image-to-3D generators.")


@app.callback()
def _main() -> None:
    """DSO: make image-to-3D generators produce objects that stand up under gravity."""


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
