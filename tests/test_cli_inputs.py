"""`dso generate` argument checks: a one-line usage error (exit 2) for bad values, exit 1 when an input failed."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dso.cli import app

USAGE_ERROR = 2  # click's exit status for a bad argument, as argparse's


def prompt_png(path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize(
    "extra, named",
    [
        (["--samples", "0"], "--samples"),
        (["--samples", "-3"], "--samples"),
        (["-k", "0"], "--samples"),
        (["--batch", "0"], "--batch"),
        (["-o", "/dev/null/x"], "/dev/null/x"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(tmp_path: Path, extra: list[str], named: str) -> None:
    image = prompt_png(tmp_path / "a.png")
    args = ["generate", str(image), "-o", str(tmp_path / "out"), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == USAGE_ERROR, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (ValueError, OSError))
    assert named in result.output


def test_a_missing_image_is_reported_the_rest_generated_and_the_exit_is_nonzero(tmp_path: Path) -> None:
    image = prompt_png(tmp_path / "good.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["generate", str(image), str(tmp_path / "missing.png"), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert "skipping" in result.output and "1 of 2 images could not be read" in result.output
    assert list(out.glob("good_s*.npy")), "the good image is still generated"
    assert "Traceback" not in result.output


def test_no_readable_image_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["generate", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")])
    assert result.exit_code == USAGE_ERROR and "none of the 1 images could be read" in result.output


def test_a_second_dso_run_on_one_run_dir_is_refused_in_one_line(tmp_path: Path) -> None:
    from dso.broker.server import EmbeddedValkey

    with EmbeddedValkey(tmp_path / "valkey"):  # the first run's server holds the run directory
        result = CliRunner().invoke(
            app, ["run", "--duration", "1", "--no-api"], env={"DSO__BROKER__RUN_DIR": str(tmp_path)}
        )
    assert result.exit_code == USAGE_ERROR, result.output
    assert "already served by another process" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_dso_run_has_the_port_its_busy_message_suggests(tmp_path: Path) -> None:
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(1)
        port = squatter.getsockname()[1]
        result = CliRunner().invoke(
            app, ["run", "--duration", "1", "--port", str(port)], env={"DSO__BROKER__RUN_DIR": str(tmp_path)}
        )
    assert result.exit_code == USAGE_ERROR, result.output
    assert f"127.0.0.1:{port}" in result.output and "--port" in result.output and "Traceback" not in result.output
    help_text = CliRunner().invoke(app, ["run", "--help"]).output
    assert "--port" in help_text and "--host" in help_text
