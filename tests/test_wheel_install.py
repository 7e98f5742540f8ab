"""Configuration that ships: the built wheel, installed outside the repository, runs from another directory.

The wheel is built from this checkout (``pip wheel --no-deps``) and installed into a fresh
virtualenv in a temporary directory. The new environment finds the dependencies through a
``.pth`` line naming this interpreter's site-packages (no downloads, no rebuild of torch);
``dso`` itself comes only from the wheel: the repository's editable install is never on its
path, and every command runs with the temporary directory as its working directory, where no
``configs/`` folder exists. The presets (``tiny``, ``run``, ...) and the embedded model must
therefore come from the package data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 300
COMMAND_TIMEOUT_S = 240
RUN_SECONDS = 20  # the short `dso run`: long enough to generate and label, short enough for CI

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DSO__", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh virtualenv holding the wheel built from this checkout."""
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True, timeout=BUILD_TIMEOUT_S, cwd=base, env=_clean_env(),
    )
    (wheel,) = dist.glob("dso-*.whl")
    env_dir = base / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    # dependencies from this interpreter's site-packages, added after the new environment's own
    (site / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        check=True, timeout=BUILD_TIMEOUT_S, cwd=base, env=_clean_env(),
    )
    return env_dir / "bin"


def dso(bin_dir: Path, cwd: Path, *args: str, timeout: float = COMMAND_TIMEOUT_S, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**_clean_env(), **extra_env}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "dso"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_is_the_dso_that_runs_and_ships_its_presets(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import dso, dso.config as c; "
        "print(dso.__file__); print(c.CONFIG_DIR); print(c.load_settings('tiny').model.source); "
        "print(c.resolve_config_path('configs/run.yaml'))"
    )
    out = subprocess.run([str(installed / "python"), "-c", probe], cwd=tmp_path, env=_clean_env(), capture_output=True,
                         text=True, timeout=COMMAND_TIMEOUT_S, check=True).stdout.split("\n")
    package, config_dir, source, run_yaml = out[:4]
    assert Path(package).is_relative_to(installed.parent), f"dso imported from {package}, not from the wheel"
    assert not Path(package).is_relative_to(ROOT)
    assert Path(config_dir).is_relative_to(installed.parent) and source == "embedded"
    assert Path(run_yaml).parent == Path(config_dir) and Path(run_yaml).name == "run.yaml"


def test_simulate_and_generate_from_another_directory(installed: Path, tmp_path: Path) -> None:
    block = np.zeros((16, 16, 16), bool)
    block[4:12, 4:12, 0:8] = True
    np.save(tmp_path / "block.npy", block)
    simulated = dso(installed, tmp_path, "simulate", "block.npy", "--json")
    assert simulated.returncode == 0, simulated.stderr
    verdict = json.loads(simulated.stdout.strip().splitlines()[-1])
    assert verdict["status"] == "ok" and verdict["stable"] is True

    Image.new("RGB", (64, 64), (200, 120, 40)).save(tmp_path / "prompt.png")
    generated = dso(installed, tmp_path, "generate", "prompt.png", "-o", "out", "--config", "configs/tiny.yaml")
    assert generated.returncode == 0, generated.stderr
    assert list((tmp_path / "out").rglob("*.npy")) and list((tmp_path / "out").rglob("*.glb"))


def test_a_short_run_from_another_directory(installed: Path, tmp_path: Path) -> None:
    ran = dso(
        installed, tmp_path, "run", "--config", "configs/run.yaml", "--duration", str(RUN_SECONDS), "--no-api",
        timeout=COMMAND_TIMEOUT_S,
        # the packaged preset is what is under test, not the canary or a long drain: keep the run short on 2 cores
        DSO__CANARY__ENABLED="false", DSO__BROKER__MAX_BACKLOG="16",
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
