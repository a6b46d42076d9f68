"""Model and CLIP merging (ComfyUI's ModelMerge* and CLIPMerge* nodes) as weight patches."""
