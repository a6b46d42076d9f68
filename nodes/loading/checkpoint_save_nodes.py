"""ComfyUI's CheckpointSave: a MODEL, CLIP and VAE written as one original-layout .safetensors.

The weights are those the model samples and the CLIP encodes with: every weight patch (LoRAs,
merges) is computed beside the loaded weights, which stay as they are, and cast to their dtype
as nodes.loading.patching casts it. The file is named as ComfyUI names it
(`<output>/checkpoints/ComfyUI_00001_.safetensors`, one past the highest number of the prefix
found) and carries ComfyUI's metadata: the run's workflow ("prompt"), its extra_pnginfo
("workflow") and the modelspec keys, with its v-prediction / EDM markers.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nodegraph import InputField, Node, NodeContext, RunSettings
from nodegraph.files import Staged, UnsafePath, confined, next_counter

from ..formats.original_layout import modelspec, original_checkpoint, sampling_markers
from ..images.io import WRITTEN, expand_prefix, saved_fingerprint, workflow_text
from ..sampling.comfy.model_sampling import ZSNR_LAST_ALPHA_BAR
from ..values import CLIP, MODEL, VAE, Clip, Model, Vae
from .patching import Patch, module_lock, patched_weight
from .residency import RESIDENCY

log = logging.getLogger(__name__)
NODE = "CheckpointSave"
SUFFIX = ".safetensors"
ZSNR_SIGMA_MAX = math.sqrt((1 - ZSNR_LAST_ALPHA_BAR) / ZSNR_LAST_ALPHA_BAR)
"""The top sigma of a zero-terminal-SNR table (how a ModelSamplingDiscrete zsnr table shows)."""
EDM_V_PREDICTIONS = ("v_prediction", "edm")
"""ComfyUI's EDM sampling kinds that are v-prediction (it marks the file for them)."""


def target(folder: Path, prefix: str) -> Path:
    """Where `prefix` puts the files in `folder` (its last part is the stem); a ValueError
    naming the node and input when it would leave the folder."""
    try:
        return confined(folder, expand_prefix(prefix).strip() or "ComfyUI")
    except UnsafePath as exc:
        raise ValueError(
            f"{NODE}: filename_prefix must stay inside the output folder ({folder}): {exc}"
        ) from exc


def baked(module: torch.nn.Module, patches: Iterable[Patch]) -> dict[str, torch.Tensor]:
    """The module's state dict on the CPU with its weight patches applied, in its dtypes; the
    module is not changed (hold its module_lock while the tensors are used)."""
    patches = [p for p in patches if p.active]
    touched = {name for patch in patches for name in patch.adapters}
    out = {}
    for name, tensor in module.state_dict().items():
        if name in touched:
            weight, applied = patched_weight(name, tensor, patches)
            tensor = weight.to(tensor.dtype) if applied else tensor
        out[name] = tensor.detach().cpu().contiguous()
    return out


@contextmanager
def locked(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Hold each module's patching lock (in order), so no run patches it in place meanwhile."""
    with ExitStack() as stack:
        for module in modules:
            stack.enter_context(module_lock(module))
        yield


def tower_states(model: Model, clip: Clip) -> dict[str, dict[str, torch.Tensor]]:
    """Each text tower's weights with the CLIP's patches for it, by tower key."""
    if clip.family != model.family:
        raise ValueError(
            f"{NODE}: clip is a {clip.family} text encoder and model a {model.family} model: "
            "a checkpoint holds the text encoders of its own family"
        )
    return {
        tower.key: baked(tower.encoder, [p for key, p in clip.patches if key == tower.key])
        for tower in clip.towers
    }


def prediction_of(model: Model) -> tuple[str, bool, tuple[float, float] | None]:
    """(the checkpoint's prediction type, zero terminal SNR, EDM v (sigma_min, sigma_max) or
    None), as ComfyUI reads them: the type from the checkpoint, the rest from the sampling a
    ModelSampling node set, if any."""
    prediction = str(model.scheduler_config.get("prediction_type", "epsilon"))
    sampling = model.sampling
    if sampling is None:
        return prediction, bool(model.scheduler_config.get("rescale_betas_zero_snr")), None
    top = float(sampling.sigma_max)
    zsnr = sampling.axis == "discrete" and math.isclose(top, ZSNR_SIGMA_MAX, rel_tol=1e-3)
    edm = sampling.axis == "continuous_edm" and sampling.prediction in EDM_V_PREDICTIONS
    return prediction, zsnr, (float(sampling.sigma_min), top) if edm else None


def write_numbered(folder: Path, stem: str, first: int, write: Callable[[Path, int], None]) -> Path:
    """`write(temporary path, n)` then publish it as `folder/<stem>_<n:05>_.safetensors`, from
    n = `first` on (a number taken meanwhile is written again with the next one)."""
    n = first
    while True:
        with Staged(folder, b"") as staged:
            write(staged.path, n)
            with staged.path.open("rb+") as f:
                os.fsync(f.fileno())
            path = folder / f"{stem}_{n:05d}_{SUFFIX}"
            if staged.publish(path):
                return path
        n += 1


def save_checkpoint(
    path_target: Path,
    model: Model,
    clip: Clip | None,
    vae: Vae | None,
    metadata: Mapping[str, str],
) -> Path:
    """Write the checkpoint under `path_target` (its parent folder and stem), numbered as
    ComfyUI numbers it; returns the file written."""
    folder, stem = path_target.parent, path_target.name
    prediction, zsnr, edm = prediction_of(model)
    towers = [] if clip is None else [t.encoder for t in clip.towers]
    modules = [model.unet, *towers, *([] if vae is None else [vae.vae])]
    with RESIDENCY.present(modules), locked([model.unet, *towers]):
        unet = (baked(model.unet, model.patches), model.unet.config)
        text = {} if clip is None else tower_states(model, clip)
        autoencoder = None if vae is None else (baked(vae.vae, ()), vae.vae.config)
        tensors = original_checkpoint(model.family, unet, autoencoder, text)
        tensors.update(sampling_markers(prediction, zsnr, edm))
        tensors = {k: v.contiguous() for k, v in tensors.items()}

        def write(path: Path, n: int) -> None:
            meta = {**modelspec(model.family, prediction, f"{stem} {n}"), **metadata}
            save_file(tensors, str(path), metadata=meta)

        return write_numbered(folder, stem, next_counter(folder, stem), write)


class CheckpointSave(Node):
    """Save the model, CLIP and VAE as one checkpoint file (LoRAs and merges baked in)."""

    category = "advanced/model_merging"
    display_name = "Save Checkpoint"
    output_node = True
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    model: MODEL = InputField(description="The diffusion model, its patches applied.")
    clip: CLIP = InputField(description="The text encoder(s), their patches applied.")
    vae: VAE = InputField(description="The VAE.")
    filename_prefix: str = InputField(
        "checkpoints/ComfyUI", description="File name start, below the output folder."
    )

    @classmethod
    def fingerprint(cls, literals: Mapping[str, Any], run: Any) -> Any:
        return saved_fingerprint(literals, run.settings)

    @classmethod
    def check(cls, literals: Mapping[str, Any], settings: RunSettings) -> list[tuple[str, str]]:
        prefix = literals.get("filename_prefix")
        if not isinstance(prefix, str):
            return []
        try:
            target(Path(settings.output_dir), prefix)
        except ValueError as exc:
            return [("filename_prefix", str(exc))]
        return []

    def invoke(self, ctx: NodeContext) -> None:
        folder = Path(ctx.settings.output_dir)
        where = target(folder, self.filename_prefix)
        ctx.check_interrupt()
        path = save_checkpoint(where, self.model, self.clip, self.vae, workflow_text(ctx))
        WRITTEN.add((str(folder.resolve()), self.filename_prefix), [path])
        log.info("saved checkpoint %s", path)
