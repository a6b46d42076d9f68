"""The node library: diffusion nodes on diffusers, plus small utility nodes."""
