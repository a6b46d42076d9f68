"""Live previews: the latent-to-colour map fitted to a checkpoint's VAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nodes.loading.checkpoints import load_checkpoint

CPU = {"device": "cpu"}


def test_preview_factors_map_encoded_colours_back():
    from nodes.latents.codec import vae_encode
    from nodes.loading.folders import SHIPPED_DIR, SHIPPED_NAME
    from nodes.sampling.preview import fit_latent_rgb, latent_preview

    if not (SHIPPED_DIR / "model_index.json").exists():
        pytest.skip("the shipped model is not in this checkout")
    model, _, vae = load_checkpoint(SHIPPED_NAME, CPU)  # a trained VAE: a random one is not linear
    factors = fit_latent_rgb(vae, model.latent_in)
    assert torch.allclose(
        factors, model.preview_factors, rtol=1e-2, atol=1e-2
    ) and factors.shape == (15, 3)
    # a preview is approximate: the dominant colour must show, and dark must stay darker
    for colour in ((0.9, 0.1, 0.1), (0.1, 0.8, 0.1), (0.1, 0.2, 0.9)):
        latent, _ = vae_encode(vae, torch.tensor(colour).expand(1, 32, 32, 3))
        latent = model.latent_in(latent)  # previews show the sampler's latents
        shown = np.asarray(latent_preview(latent, factors), dtype=np.float32).mean(axis=(0, 1))
        assert shown.argmax() == int(np.argmax(colour)), (colour, shown)
    means = []
    for level in (0.1, 0.9):
        latent = model.latent_in(vae_encode(vae, torch.full((1, 32, 32, 3), level))[0])
        means.append(np.asarray(latent_preview(latent, factors), dtype=np.float32).mean())
    assert means[0] + 60 < means[1]
