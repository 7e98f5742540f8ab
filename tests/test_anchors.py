"""Ground-truth anchors: the shipped VAE encoder turns a true object into a latent the decoder gives back."""

import numpy as np

from dso.config import load_settings
from dso.learner.anchors import GroundTruthAnchors
from dso.models.factory import load_stage_one, load_vae_encoder
from dso.shapes.prompts import training_prompt


def test_anchor_latents_decode_to_the_true_object():
    settings = load_settings("tiny", environ={})
    encoder = load_vae_encoder(settings.model)
    assert encoder is not None, "the embedded default ships its VAE encoder"
    truth = {"a": training_prompt(500_000, view_seed=500_000, settings=settings.shapes).object.occupancy}
    anchors = GroundTruthAnchors(encoder, truth.get)
    latent = anchors.latent("a")
    assert latent is not None and anchors.latent("nope") is None
    decoder = load_stage_one(settings.model).decoder
    logits = decoder(latent[None].to(next(decoder.parameters()).dtype))
    decoded = (logits[0, 0] > 0).detach().numpy()
    iou = (decoded & truth["a"]).sum() / (decoded | truth["a"]).sum()
    assert iou > 0.5, iou
    drawn = anchors.draw(["a", "nope", "a"], k=3, rng=np.random.default_rng(0))
    assert [p for p, _ in drawn] == ["a"], "only prompts with ground truth, each once"
