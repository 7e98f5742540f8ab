"""`dso simulate PATH... [--json] [--mode] [--workers] [--config]`."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from dso.cli import app


def write_grids(tmp_path):
    stands = np.zeros((16, 16, 16), dtype=bool)
    stands[4:12, 4:12, 0:6] = True
    falls = np.zeros((16, 16, 16), dtype=bool)
    falls[2:4, 6:10, 0:12] = True  # post
    falls[2:15, 6:10, 10:12] = True  # long arm
    np.save(tmp_path / "stands.npy", stands)
    np.save(tmp_path / "falls.npy", falls)
    return tmp_path / "stands.npy", tmp_path / "falls.npy"


def test_json_lines_one_per_input(tmp_path):
    stands, falls = write_grids(tmp_path)
    result = CliRunner().invoke(app, ["simulate", str(stands), str(falls), "--json", "--workers", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.strip().splitlines()]
    assert [r["input"] for r in rows] == [str(stands), str(falls)]
    assert [r["stable"] for r in rows] == [True, False]
    assert all(r["status"] == "ok" and r["mode"] == "boxes" for r in rows)


def test_text_output_mode_and_config(tmp_path):
    stands, _ = write_grids(tmp_path)
    config = tmp_path / "sim.yaml"
    config.write_text("sim:\n  tilt_threshold_deg: 10.0\n  workers: 1\n")
    result = CliRunner().invoke(app, ["simulate", str(stands), "--mode", "hull", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "STABLE" in result.output and "hull" in result.output


def test_bad_input_reports_and_exits_nonzero(tmp_path):
    stands, _ = write_grids(tmp_path)
    missing = tmp_path / "missing.npy"
    result = CliRunner().invoke(app, ["simulate", str(missing), str(stands), "--workers", "1"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert "INVALID_INPUT" in lines[0] and "no such file" in lines[0]
    assert "STABLE" in lines[1]


def test_huge_grid_is_refused_in_one_line_and_exits_nonzero(tmp_path):
    """`dso simulate` on a 1000^3 .npy: refused from its header (not a 4 GB read), the rest still labelled."""
    stands, _ = write_grids(tmp_path)
    huge = tmp_path / "huge.npy"
    with huge.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|b1", "fortran_order": False, "shape": (1000,) * 3})
    result = CliRunner().invoke(app, ["simulate", str(huge), str(stands), "--workers", "1"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert "INVALID_INPUT" in lines[0] and "sim.max_grid_side" in lines[0]
    assert "STABLE" in lines[1]


def test_bad_config_is_a_usage_error(tmp_path):
    stands, _ = write_grids(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text("sim:\n  no_such_knob: 1\n")
    result = CliRunner().invoke(app, ["simulate", str(stands), "--config", str(config)])
    assert result.exit_code == 2
