"""Sampling: where denoising starts, the walk down the schedule, and its live previews."""
