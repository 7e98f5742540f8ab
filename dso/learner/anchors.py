"""Ground-truth anchors: a fixed share of every online batch is the prompt's true shape, labelled stable.

Online, the learner trains on its own samples, so whatever a version gets wrong it teaches the next
(self-consuming training). Where a prompt comes with its true object (the embedded default's training
prompts are procedural objects), the object's latent (posterior mean of the VAE encoder, as pretraining
encodes its targets) joins the stable half of each batch: its pull is ordinary flow matching toward the
truth, which is stable by construction, so the anchor and the stability signal point the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn


class GroundTruthAnchors:
    """Latents of true objects by prompt id, encoded once; ``draw`` picks some for a batch."""

    def __init__(self, encoder: nn.Module, occupancy_of: Callable[[str], np.ndarray | None]):
        self.encoder = encoder.eval()
        self.occupancy_of = occupancy_of  # prompt id -> true occupancy grid, or None (no ground truth)
        self._latents: dict[str, torch.Tensor | None] = {}

    @torch.no_grad()
    def latent(self, prompt_id: str) -> torch.Tensor | None:
        if prompt_id not in self._latents:
            occupancy = self.occupancy_of(prompt_id)
            if occupancy is None:
                self._latents[prompt_id] = None
            else:
                x = torch.from_numpy(np.asarray(occupancy, dtype=np.float32))[None, None]
                param = next(self.encoder.parameters())
                _, mean, _ = self.encoder(x.to(param.device, param.dtype), sample_posterior=False, return_raw=True)
                self._latents[prompt_id] = mean[0].detach().to("cpu", torch.float32)
        return self._latents[prompt_id]

    def draw(self, prompt_ids: Sequence[str], k: int, rng: np.random.Generator) -> list[tuple[str, torch.Tensor]]:
        """Up to ``k`` (prompt id, latent) pairs from those of ``prompt_ids`` that have ground truth."""
        known = [(p, z) for p in dict.fromkeys(prompt_ids) if (z := self.latent(p)) is not None]
        if not known or k <= 0:
            return []
        picks = rng.choice(len(known), size=min(k, len(known)), replace=False)
        return [known[i] for i in picks]
