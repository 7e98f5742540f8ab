"""Held-out evaluation: metrics on known outputs (perfect copies, toppling shapes, empty grids) and on a real model."""

import json
import math

import numpy as np
import pytest
import torch

from dso.config import EvalSettings, load_settings
from dso.evaluate.report import markdown_table, rich_table, summarize, write_json
from dso.evaluate.stability import base_footprint, evaluate_generator, generate_heldout, sample_seeds
from dso.models.factory import build_tiny_modules, export_tiny_folder
from dso.models.generator import Generator
from dso.shapes.prompts import heldout_prompts

GRID = 32


@pytest.fixture(scope="module")
def settings():
    s = load_settings("tiny", environ={})
    s.shapes.heldout_objects = 3
    s.shapes.heldout_views = 1
    return s


@pytest.fixture(scope="module")
def prompts(settings):
    return heldout_prompts(settings.shapes)


def toppling_shape() -> np.ndarray:
    occ = np.zeros((GRID,) * 3, bool)
    occ[4:7, 14:17, 0:22] = True
    occ[4:30, 10:22, 22:28] = True
    return occ


class ScriptedGenerator:
    """Recognises each prompt by its image and decodes a chosen grid for it (truth, toppling, plate or empty)."""

    def __init__(self, prompts, mode):
        self.keys = [p.image.tobytes() for p in prompts]
        self.prompts = prompts
        self.mode = mode
        self.seen_seeds = []

    def encode(self, images):
        return torch.tensor([[self.keys.index(np.asarray(im).tobytes())] for im in images], dtype=torch.float32)[:, None, :]

    def sample_latents(self, cond, seeds):
        self.seen_seeds += list(seeds)
        return cond.reshape(len(seeds), 1)

    def decode(self, latents):
        out = []
        for i in latents[:, 0].long().tolist():
            truth = self.prompts[i].object.occupancy
            if self.mode == "truth":
                out.append(truth)
            elif self.mode == "topple":
                out.append(toppling_shape())
            elif self.mode == "plate":  # the truth standing on a wide flat plate: the DSO "cheat"
                occ = np.zeros_like(truth)
                zs = np.flatnonzero(truth.any(axis=(0, 1)))
                occ[:, :, 1 : GRID - zs[0]] = truth[:, :, zs[0] : GRID - 1]
                occ[2:30, 2:30, 0] = True
                out.append(occ)
            else:
                out.append(np.zeros_like(truth))
        return np.stack(out)


def evaluation(settings, prompts, mode, k=2):
    ev = EvalSettings(samples_per_prompt=k, workers=1, surface_points=512, icp_iterations=10, batch_prompts=2)
    gen = ScriptedGenerator(prompts, mode)
    return evaluate_generator(gen, prompts, settings.sim, ev), gen


def test_perfect_copies_score_perfectly(settings, prompts):
    results, gen = evaluation(settings, prompts, "truth")
    s = summarize(results)
    assert s.samples == 6 and s.pct_output == 100.0 and s.pct_stable == 100.0
    assert s.chamfer < 0.04 and s.fscore > 85.0  # floor set by 512 independent surface samples per mesh
    assert s.mean_tilt_deg < 2.0 and math.isclose(s.base_area_ratio, 1.0)
    assert gen.seen_seeds == [7_000_000 + i for i in range(6)], "fixed seeds: every model sees the same noise"


def test_toppling_outputs_are_unstable_and_far_from_the_truth(settings, prompts):
    s = summarize(evaluation(settings, prompts, "topple")[0])
    assert s.pct_output == 100.0 and s.pct_stable == 0.0
    assert s.mean_tilt_deg >= 20.0 and s.mean_rotation_deg >= s.mean_tilt_deg - 1e-6
    assert s.chamfer > 0.03 and s.fscore < 80.0


def test_empty_outputs_count_as_no_output(settings, prompts):
    s = summarize(evaluation(settings, prompts, "empty")[0])
    assert s.pct_output == 0.0 and math.isnan(s.pct_stable) and math.isnan(s.chamfer)


def test_flat_base_plates_raise_the_base_area_ratio(settings, prompts):
    s = summarize(evaluation(settings, prompts, "plate", k=1)[0])
    assert s.pct_stable == 100.0 and s.base_area_ratio > 2.0


def test_base_footprint_counts_the_lowest_layers():
    occ = np.zeros((8, 8, 8), bool)
    occ[2:4, 2:4, 3] = True  # lowest occupied layer: 4 cells
    occ[0:8, 0:8, 5] = True
    assert base_footprint(occ, 1) == 4 and base_footprint(occ, 3) == 64
    assert base_footprint(np.zeros((4, 4, 4), bool), 2) == 0


def test_report_json_and_tables(settings, prompts, tmp_path):
    results, _ = evaluation(settings, prompts, "empty", k=1)
    doc = write_json(tmp_path / "eval.json", results, extra={"adapter": None})
    loaded = json.loads((tmp_path / "eval.json").read_text())
    assert loaded["summary"]["pct_output"] == 0.0 and loaded["summary"]["chamfer"] is None  # NaN -> null
    assert len(loaded["samples"]) == 3 and set(loaded["by_family"]) == {p.object.family for p in prompts}
    assert doc["summary"]["samples"] == 3
    rows = {"base": summarize(results)}
    table = markdown_table(rows)
    assert table.splitlines()[0].startswith("| model | % stable") and "| base | nan |" in table
    assert rich_table(rows).row_count == 1


def test_summary_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        summarize([])


def test_real_generator_end_to_end(settings, prompts, tmp_path):
    torch.manual_seed(0)
    folder = export_tiny_folder(build_tiny_modules(settings.model, settings.sampler), settings, tmp_path / "model")
    gen = Generator.from_settings(load_settings("tiny", environ={"DSO__MODEL__WEIGHTS_PATH": str(folder), "DSO__SAMPLER__STEPS": "2"}))
    ev = EvalSettings(samples_per_prompt=1, workers=1, surface_points=256, icp_iterations=5)
    samples = generate_heldout(gen, prompts[:2], ev)
    assert samples.occupancy.shape == (2, GRID, GRID, GRID)
    assert list(samples.seeds) == sample_seeds(0, ev) + sample_seeds(1, ev)
    results = evaluate_generator(gen, prompts[:2], settings.sim, ev)
    assert [r.prompt_id for r in results] == [p.prompt_id for p in prompts[:2]]
    assert all(r.status in ("ok", "invalid_input") for r in results)


def _random_model_env(settings, tmp_path):
    torch.manual_seed(0)
    folder = export_tiny_folder(build_tiny_modules(settings.model, settings.sampler), settings, tmp_path / "model")
    return {
        "DSO__MODEL__WEIGHTS_PATH": str(folder),
        "DSO__SAMPLER__STEPS": "2",
        "DSO__SHAPES__HELDOUT_OBJECTS": "2",
        "DSO__SHAPES__HELDOUT_VIEWS": "1",
        "DSO__EVAL__SAMPLES_PER_PROMPT": "1",
        "DSO__EVAL__WORKERS": "1",
        "DSO__EVAL__SURFACE_POINTS": "256",
    }


def test_dso_eval_cli_writes_json_and_a_table(settings, tmp_path):
    from typer.testing import CliRunner

    from dso.cli import app

    result = CliRunner(env=_random_model_env(settings, tmp_path)).invoke(app, ["eval", "--out", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    assert "% stable" in result.output and "By family" in result.output
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["summary"]["samples"] == 2 and doc["adapter"] is None


@pytest.mark.slow
def test_dso_experiment_cli_regenerates_results(settings, tmp_path):
    """The whole experiment at toy size (SFT only: a random model's blobs are all stable, so DRO/DPO have no data)."""
    from typer.testing import CliRunner

    from dso.cli import app

    env = _random_model_env(settings, tmp_path) | {
        "DSO__DATASET__OBJECTS": "2",
        "DSO__DATASET__VIEWS_PER_OBJECT": "1",
        "DSO__DATASET__SAMPLES_PER_PROMPT": "2",
        "DSO__DATASET__SIM_WORKERS": "1",
        "DSO__EXPERIMENT__OBJECTIVES": "[sft]",
        "DSO__EXPERIMENT__EVAL_EVERY": "2",
        "DSO__EXPERIMENT__SAMPLE_PROMPTS": "2",
        "DSO__TRAIN__BATCH_SIZE": "2",
    }
    docs = tmp_path / "docs"
    (docs).mkdir()
    (docs / "results.md").write_text("old\n<!-- notes: kept when the file is regenerated -->\nmy notes\n<!-- /notes -->\n")
    args = ["experiment", "--steps", "3", "--output-dir", str(tmp_path / "exp"), "--docs-dir", str(docs)]
    result = CliRunner(env=env).invoke(app, args)
    assert result.exit_code == 0, result.output
    text = (docs / "results.md").read_text()
    assert "| base |" in text and "| sft |" in text and "my notes" in text and "old" not in text.splitlines()[0]
    for name in ("results_curves.png", "results_samples.png", "results_losses.png"):
        assert (docs / name).stat().st_size > 1000
    evals = sorted(p.name for p in (tmp_path / "exp" / "eval").iterdir())
    assert evals == ["base.json", "sft_step000002.json", "sft_step000003.json"]
