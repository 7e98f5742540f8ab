"""The shipped embedded default: it loads from the package, with no download, and generates real shapes."""

import json

from dso.config import load_settings
from dso.evaluate.geometry import compare_meshes
from dso.models.factory import TINY_DIR
from dso.models.mesh import occupancy_to_mesh
from dso.models.generator import Generator
from dso.shapes.prompts import heldout_prompts
from dso.shapes.render import to_pil


def test_shipped_weights_are_small_and_documented():
    files = [p for p in TINY_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25 * 2**20
    record = json.loads((TINY_DIR / "training.json").read_text())
    assert record["command"] == "dso pretrain --config configs/tiny.yaml"
    assert record["seed"] == 0


def test_shipped_weights_generate_non_empty_shapes_that_resemble_the_prompt():
    settings = load_settings("tiny", environ={})
    gen = Generator.from_settings(settings)
    prompts = heldout_prompts(settings.shapes)[:2]
    shapes = gen.generate([to_pil(p.image) for p in prompts], samples_per_image=1, seed=0)
    for prompt, shape in zip(prompts, shapes):
        truth = prompt.object.occupancy
        assert shape.occupancy.any()
        assert shape.mesh.is_watertight or len(shape.mesh.faces) > 0
        score = compare_meshes(shape.mesh, occupancy_to_mesh(truth))
        assert score.fscore > 0.3, f"F-score@0.05 against the prompt's object is only {score.fscore:.2f}"
