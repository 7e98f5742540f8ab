"""The cluster job: ``ray job submit --working-dir . -- python -m dso.jobs.align --config configs/cluster.yaml``.

Runs the same loop as ``dso run`` on the Ray cluster the job was submitted to
(``RAY_ADDRESS`` is set by the job manager; without it a local Ray starts) and
exits 0 after ``--duration`` seconds or on SIGTERM (``ray job stop``), 1 when a role
failed or work was left unlabelled (the job is then marked failed), 2 when it cannot start. The HTTP
API stays off unless ``--api`` (on Kubernetes the chart runs it as its own Deployment).
"""

from __future__ import annotations

import argparse
import logging
import sys

from dso.api.server import PortInUseError
from dso.broker.server import BrokerServerError
from dso.jobs.session import run_loop, session_settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dso.jobs.align", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cluster", help="YAML config (a path, or a name under configs/)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to run (default: loop.duration_s)")
    parser.add_argument("--redis", default=None, help="Redis URL (default: broker.redis_url, else embedded Valkey)")
    parser.add_argument("--address", default=None, help="Ray address (default: the job's cluster, else local)")
    parser.add_argument("--api", action="store_true", help="serve the HTTP API from the job driver (api.host:api.port)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = session_settings(args.config, args.duration, args.redis, api=args.api)
    try:
        summary = run_loop(settings, ray_address=args.address)
    except (PortInUseError, BrokerServerError) as exc:  # expected conditions: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary is not None and summary.problems():
        print(f"error: the run did not end cleanly: {'; '.join(summary.problems())}", file=sys.stderr)
        return 1
    return 0 if summary is not None else 1


if __name__ == "__main__":
    sys.exit(main())
