"""Latents: empty latents and the VAE between pixels and latents."""
