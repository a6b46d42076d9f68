"""ComfyUI's sampling, reimplemented: sigma tables, schedulers, noise, guidance and samplers.

ComfyUI-named nodes sample through this package so that a workflow moved from ComfyUI gives
the same picture; the native AddNoise / Denoise keep diffusers' semantics (nodes.sampling.native).
"""
