"""Upscale models (ESRGAN, Real-ESRGAN, SwinIR, ... through spandrel) and tiled upscaling."""
