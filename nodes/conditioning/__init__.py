"""Conditioning: prompts through the text encoders, and what guides the sampler."""
