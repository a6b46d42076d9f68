#!/bin/sh
# Run a tools/comfy_reference script with ComfyUI importable (a developer's check, by hand).
# COMFYUI: a ComfyUI checkout; COMFY_DEPS: extra folders with its requirements (colon-separated).
: "${COMFYUI:?set COMFYUI to a ComfyUI checkout}"
root=$(cd "$(dirname "$0")/../.." && pwd)
PYTHONPATH="$root:$COMFYUI${COMFY_DEPS:+:$COMFY_DEPS}" exec "$root/.venv/bin/python" "$@"
