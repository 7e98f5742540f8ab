from pathlib import Path

import pytest
from pydantic import ValidationError

from dso.config import CONFIG_DIR, Settings, load_settings


def test_defaults_are_trellis_large():
    s = Settings()
    assert s.model.transformer.model_channels == 1024
    assert s.model.transformer.num_blocks == 24
    assert s.lora.r == 64 and s.lora.alpha == 128
    assert s.sim.tilt_threshold_deg == 20.0


def test_every_shipped_config_validates():
    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert files, "no configs shipped"
    for f in files:
        load_settings(f, environ={})


def test_yaml_then_env_override(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sim:\n  timestep: 0.004\nlora:\n  r: 8\n")
    s = load_settings(cfg, environ={"DSO__LORA__R": "16", "OTHER": "x"})
    assert s.sim.timestep == 0.004
    assert s.lora.r == 16


def test_unknown_key_is_an_error(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sim:\n  timstep: 0.004\n")
    with pytest.raises(ValidationError, match="timstep"):
        load_settings(cfg, environ={})


def test_missing_config_file_names_it():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_settings("nope.yaml", environ={})


def test_config_extends_its_base(tmp_path: Path):
    (tmp_path / "parent.yaml").write_text("sim:\n  timestep: 0.004\nlora:\n  r: 8\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: parent.yaml\nlora:\n  alpha: 4\n")
    s = load_settings(child, environ={})
    assert s.sim.timestep == 0.004 and s.lora.r == 8 and s.lora.alpha == 4


def test_dro_is_the_default_everywhere():
    """make run (run.yaml), the cluster job (cluster.yaml) and the chart's values all train DRO behind the canary."""
    import yaml

    run, tiny, cluster = (load_settings(n, environ={}) for n in ("run", "tiny", "cluster"))
    assert run.model == tiny.model == cluster.model and run.shapes == tiny.shapes
    for s in (run, tiny, cluster):
        assert s.objective.name == "dro" and s.canary.enabled and s.loop.max_steps_per_sample == 0.25
    assert run.loop.duration_s <= 300, "make run shows the product working within five minutes"
    chart = yaml.safe_load((Path(__file__).resolve().parent.parent / "helm/dso/values.yaml").read_text())["config"]
    assert chart.get("objective", {}).get("name", "dro") == "dro" and chart.get("canary", {}).get("enabled", True)


def test_config_cannot_extend_itself(tmp_path: Path):
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="extends itself"):
        load_settings(loop, environ={})


def test_presets_ship_in_the_package_and_configs_paths_name_them(tmp_path, monkeypatch) -> None:
    from dso.config import resolve_config_path

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    for name in ("run", "run.yaml", "configs/run.yaml"):
        assert resolve_config_path(name) == CONFIG_DIR / "run.yaml"
    assert CONFIG_DIR.parent.name == "dso", "the presets are package data"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("base: tiny.yaml\nloop: {publish_every: 3}\n")
    assert resolve_config_path("configs/run.yaml") == Path("configs/run.yaml"), "a user's own file wins"
    assert load_settings("configs/run.yaml", environ={}).loop.publish_every == 3
