"""Benchmark the stability oracle: speed and label agreement of our default vs the paper's configuration.

    python bench/oracle.py [--shapes 200] [--quick] [--workers 0] [--no-write]
    python bench/oracle.py --meshes [--shapes 24] [--mesh-dir DIR] [--real 40]   # the "### Meshes" part only

On the same shapes (procedural objects and noisy variants) it measures, for
the default settings and the paper's (single hull, Euler, 1 ms, fixed 10 s):
shapes/s on one core (in-process, serial) and on all cores (process pool),
p50/p95 latency per shape, and label agreement with a high-fidelity reference
(exact boxes, 0.25 ms steps, fixed 20 s, run on all cores). Results go to
docs/benchmarks.md, section "## Stability oracle"; ``--meshes`` runs the mesh part instead
(bench/oracle_meshes.py: default mesh path vs the paper's hull on procedural and real meshes)
and writes its "### Meshes" subsection, which a grid run keeps.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from oracle_shapes import bench_shapes  # noqa: E402

from dso.config import SimSettings  # noqa: E402
from dso.sim.batch import OraclePool  # noqa: E402
from dso.sim.oracle import simulate  # noqa: E402
from dso.sim.presets import paper_settings, reference_settings  # noqa: E402
from dso.sim.verdict import SimStatus, Verdict  # noqa: E402
from benchdocs import keep_subsection, write_subsection  # noqa: E402
from benchdocs import write_section as write_section_in  # noqa: E402

SECTION = "## Stability oracle"


def run_serial(shapes, configs: dict[str, SimSettings]) -> dict[str, tuple[list[Verdict], list[float]]]:
    """One core: simulate each shape under every config in this process, interleaved so that
    background load hits all configs alike; per-shape verdicts and latencies."""
    out: dict[str, tuple[list[Verdict], list[float]]] = {name: ([], []) for name in configs}
    for settings in configs.values():
        simulate(shapes[0].occupancy, settings)  # warm caches and imports
    for shape in shapes:
        for name, settings in configs.items():
            t0 = time.perf_counter()
            verdict = simulate(shape.occupancy, settings)
            out[name][1].append(time.perf_counter() - t0)
            out[name][0].append(verdict)
    return out


def run_pool(shapes, settings: SimSettings, workers: int) -> tuple[list[Verdict], float]:
    """All cores: a warm process pool (started and warmed before the clock starts)."""
    items = [s.occupancy for s in shapes]
    with OraclePool(settings, workers) as pool:
        pool.map(items[:1] * workers)  # wait until every worker is up
        start = time.perf_counter()
        verdicts = pool.map(items)
        return verdicts, time.perf_counter() - start


def agreement(verdicts: list[Verdict], reference: list[Verdict]) -> tuple[float, int, list[int]]:
    """Fraction of shapes (ok in both runs) with the same stable label; count compared; disagreeing indices."""
    pairs = [
        (i, v.stable, r.stable)
        for i, (v, r) in enumerate(zip(verdicts, reference))
        if v.status == SimStatus.ok and r.status == SimStatus.ok
    ]
    wrong = [i for i, a, b in pairs if a != b]
    return (1.0 - len(wrong) / len(pairs)) if pairs else float("nan"), len(pairs), wrong


def write_section(path: Path, body: str) -> None:
    """Rewrite the section, carrying over the mesh part (written by ``--meshes`` runs)."""
    import oracle_meshes

    meshes = keep_subsection(path, SECTION, oracle_meshes.SUBSECTION)
    write_section_in(path, SECTION, body.rstrip("\n") + "\n" + ("\n" + meshes if meshes else ""))


def main_meshes(args, argv: list[str] | None) -> int:
    """``--meshes``: the mesh part of the bench, written to the "### Meshes" subsection."""
    import oracle_meshes

    load_before = os.getloadavg()[0]
    workers = args.workers or (os.cpu_count() or 1)
    shapes, _ = bench_shapes(args.shapes, seed=args.seed)
    result = oracle_meshes.run(shapes, args.mesh_dir, args.real, workers)
    command = "python bench/oracle.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = oracle_meshes.section_body(result, command.strip(), args.mesh_dir, workers, (load_before, os.getloadavg()[0]))
    if not args.no_write:
        write_subsection(args.output, SECTION, oracle_meshes.SUBSECTION, body)
        print(f"wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=int, default=200, help="number of shapes (default 200)")
    parser.add_argument("--quick", action="store_true", help="small run: 24 shapes unless --shapes is given")
    parser.add_argument("--workers", type=int, default=0, help="pool size for the all-core runs (0 = all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-reference", action="store_true", help="reference collides every box (slow)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--meshes", action="store_true", help="run the mesh part (### Meshes) instead of the grids")
    parser.add_argument("--mesh-dir", type=Path, default=None, help="--meshes: a folder of real meshes (e.g. pybullet_data)")
    parser.add_argument("--real", type=int, default=40, help="--meshes: how many meshes from --mesh-dir (default 40)")
    args = parser.parse_args(argv)
    if args.meshes:
        if "--shapes" not in (argv or sys.argv):
            args.shapes = 24
        return main_meshes(args, argv)
    count = 24 if args.quick and "--shapes" not in (argv or sys.argv) else args.shapes
    workers = args.workers or (os.cpu_count() or 1)

    load_before = os.getloadavg()[0]
    shapes, source = bench_shapes(count, seed=args.seed)
    configs = {"default": SimSettings(), "paper": paper_settings()}
    print(f"{len(shapes)} shapes from {source}; {workers} worker(s) for the all-core runs", flush=True)

    t0 = time.perf_counter()
    reference_config = reference_settings()
    if not args.full_reference:
        # hull-vertex pruning is exact for a rigid body on a plane (see dso/sim/geometry.py) and makes
        # the reference ~5x cheaper; --full-reference collides every box to check that claim too
        reference_config = reference_config.model_copy(update=dict(prune_collision_boxes=True))
    reference, ref_wall = run_pool(shapes, reference_config, workers)
    print(f"reference done in {ref_wall:.1f} s", flush=True)

    rows = []
    serial_runs = run_serial(shapes, configs)
    for name, settings in configs.items():
        serial, latencies = serial_runs[name]
        serial_wall = sum(latencies)
        _, pool_wall = run_pool(shapes, settings, workers)
        agree, compared, wrong = agreement(serial, reference)
        ok = sum(v.status == SimStatus.ok for v in serial)
        stable = sum(v.stable for v in serial)
        row = dict(
            name=name,
            one_core=len(shapes) / serial_wall,
            all_cores=len(shapes) / pool_wall,
            p50=float(np.percentile(latencies, 50)) * 1e3,
            p95=float(np.percentile(latencies, 95)) * 1e3,
            agree=agree,
            compared=compared,
            wrong=[shapes[i].name for i in wrong],
            ok=ok,
            stable=stable,
            mean_steps=float(np.mean([v.steps for v in serial])),
            mean_geoms=float(np.mean([v.collision_geoms for v in serial])),
        )
        rows.append(row)
        print(
            f"{name:8s} one core {row['one_core']:7.1f} shapes/s | all cores {row['all_cores']:7.1f} shapes/s | "
            f"p50 {row['p50']:6.1f} ms p95 {row['p95']:6.1f} ms | agreement {agree * 100:5.1f} % of {compared} "
            f"| stable {stable}/{ok} | disagree: {', '.join(row['wrong'][:8])}",
            flush=True,
        )
    ref_stable = sum(v.stable for v in reference)
    default, paper = rows
    speedup = default["one_core"] / paper["one_core"]
    print(f"default / paper throughput on one core: {speedup:.1f}x; total {time.perf_counter() - t0:.0f} s")

    d = SimSettings()
    body = [
        SECTION,
        "",
        f"`python bench/oracle.py --shapes {len(shapes)}{f' --seed {args.seed}' if args.seed else ''}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU core(s), {workers} pool worker(s); shapes: {len(shapes)} from {source} "
        "(every other one a noisy variant: holes, specks, blobs, leans, mixed). "
        f"Reference: exact boxes ({'all boxes collide' if args.full_reference else 'boxes on hull vertices collide'}), "
        f"0.25 ms steps, fixed 20 s, no early stop; {ref_stable}/{len(shapes)} stable; took {ref_wall:.0f} s on the pool. "
        f"Load average while running: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        "(the machine is shared: absolute times are noisy, the two configurations are timed interleaved "
        "shape by shape so the ratio is fair; an all-core rate below the one-core rate means other "
        "processes held the cores).",
        "",
        "| configuration | shapes/s, 1 core | shapes/s, all cores | p50 ms | p95 ms | agreement with reference | mean steps | mean collision geoms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        body.append(
            f"| {row['name']} | {row['one_core']:.1f} | {row['all_cores']:.1f} | {row['p50']:.1f} | {row['p95']:.1f} "
            f"| {row['agree'] * 100:.1f} % ({row['compared']}) | {row['mean_steps']:.0f} | {row['mean_geoms']:.1f} |"
        )
    body += [
        "",
        f"Default over paper throughput, one core: **{speedup:.1f}x**.",
        "",
        f"- default: boxes (merged voxels, collision on the boxes holding convex-hull vertices), "
        f"{d.integrator}, {d.timestep * 1e3:g} ms, early stop at rest ({d.rest_dwell_time:g} s dwell) "
        f"or past {d.fall_stop_tilt_deg} deg tilt, at most {d.max_time:g} s.",
        "- paper: single convex hull for collision and mass, Euler, 1 ms, fixed 10 s, MuJoCo default friction.",
        "- latency = wall time of `simulate()` per shape in one process (geometry, compile, stepping); "
        "shapes/s on one core = shapes / sum of those latencies; on all cores = a warm `OraclePool`.",
        "- labels agree with the reference where both say stable or both unstable (tilt < 20 deg).",
    ]
    if default["wrong"] or paper["wrong"]:
        body.append(f"- disagreements, default: {', '.join(default['wrong']) or 'none'}; paper: {', '.join(paper['wrong']) or 'none'}.")
    if not args.no_write:
        write_section(args.output, "\n".join(body) + "\n")
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
