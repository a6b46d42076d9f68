"""The Stable Diffusion families as data: text towers, latent scale, schedule, size conditions.

A checkpoint's family is read from its tensors (nodes.formats.detect); everything a loader needs
to know about a family beyond the shapes is in `FAMILIES`. The numbers are the published
models' (CompVis / Stability configs, as ComfyUI's supported_models and diffusers' configs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

CLIP_L_PAD = 49407  # CLIP-L pads a prompt with its end token
OPEN_CLIP_PAD = 0  # OpenCLIP towers pad with token 0 ("!")

LDM_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


@dataclass(frozen=True)
class TowerSpec:
    """One text tower of a family: its ComfyUI key, where it lives in a single file, how it's read.

    `layout` is "hf" (transformers CLIP names) or "open_clip" (OpenCLIP's resblocks); `layer`
    and `final_norm` are ComfyUI's defaults for the tower with all its layers (a diffusers
    folder's SD 2 encoder already lacks the unused last layer, see `folder_drops_last`).
    """

    key: str
    prefixes: tuple[str, ...]
    """Where the tower lives in a single file; the first prefix found is used."""
    layout: str
    layer: int | None
    final_norm: bool
    pad_id: int
    projection: bool = False
    folder_drops_last: bool = False
    """diffusers folders hold the tower without its unused last layer (SD 2), so they read the
    encoder's own output instead of `layer`."""
    diffusers_component: str = "text_encoder"
    tokenizer_component: str = "tokenizer"


@dataclass(frozen=True)
class Family:
    """What a family's checkpoints share beyond their shapes."""

    key: str
    label: str
    towers: tuple[TowerSpec, ...]
    latent_scale: float
    size: int
    scheduler: dict[str, Any]
    heads: str
    """'fixed8': 8 attention heads everywhere (SD 1.x); 'per64': one head per 64 channels."""
    time_ids: int = 0
    """SDXL's size / aesthetic conditions appended to the pooled text (0: none)."""
    aesthetic: bool = False


_L = "cond_stage_model.transformer."
_H = "cond_stage_model.model."
_XL_L = "conditioner.embedders.0.transformer."
_XL_G = "conditioner.embedders.1.model."
_REFINER_G = "conditioner.embedders.0.model."


def _big_g(prefix: str) -> TowerSpec:
    """SDXL's OpenCLIP bigG tower (its pooled, projected output conditions the UNet too)."""
    return TowerSpec(
        "g",
        (prefix,),
        "open_clip",
        -2,
        False,
        OPEN_CLIP_PAD,
        projection=True,
        diffusers_component="text_encoder_2",
        tokenizer_component="tokenizer_2",
    )


_SD_SCHEDULER = {
    **LDM_BETAS,
    "_class_name": "PNDMScheduler",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}  # as the published SD 1.x / 2.x scheduler configs: no timestep_spacing (each sampler's own)
_XL_SCHEDULER = {
    **LDM_BETAS,
    "_class_name": "EulerDiscreteScheduler",
    "interpolation_type": "linear",
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}

FAMILIES: dict[str, Family] = {
    "sd1": Family(
        key="sd1",
        label="SD 1.x",
        towers=(TowerSpec("l", (_L,), "hf", None, True, CLIP_L_PAD),),
        latent_scale=0.18215,
        size=512,
        scheduler=_SD_SCHEDULER,
        heads="fixed8",
    ),
    "sd2": Family(
        key="sd2",
        label="SD 2.x",
        towers=(
            TowerSpec(
                "h", (_H, _REFINER_G), "open_clip", -2, True, OPEN_CLIP_PAD, folder_drops_last=True
            ),
        ),
        latent_scale=0.18215,
        size=512,
        scheduler=_SD_SCHEDULER,
        heads="per64",
    ),
    "sdxl": Family(
        key="sdxl",
        label="SDXL",
        towers=(
            TowerSpec("l", (_XL_L,), "hf", -2, False, CLIP_L_PAD),
            _big_g(_XL_G),
        ),
        latent_scale=0.13025,
        size=1024,
        scheduler=_XL_SCHEDULER,
        heads="per64",
        time_ids=6,
    ),
    "sdxl_refiner": Family(
        key="sdxl_refiner",
        label="SDXL refiner",
        towers=(_big_g(_REFINER_G),),
        latent_scale=0.13025,
        size=1024,
        scheduler=_XL_SCHEDULER,
        heads="per64",
        time_ids=5,
        aesthetic=True,
    ),
}

V_PREDICTION_SIZE = 768  # SD 2.x v-prediction checkpoints are the 768-pixel ones
V_MARKER_STD = 0.09
"""SD 2.x is v-prediction when the std of its last attention block's norm1 bias exceeds this."""
INPAINT_CHANNELS = 9
"""4 noise + 1 mask + 4 masked-image latent channels."""
IP2P_CHANNELS = 8
"""InstructPix2Pix: 4 noise + 4 channels of the (unscaled) latent of the picture to edit."""
UNCLIP_TOWER_PREFIX = "cond_stage_model."
"""SD 2.x unCLIP files keep their text tower where SD 2.x does (SDXL's are under `conditioner.`)."""
UNCLIP_IMAGE_PREFIX = "embedder."
"""...and their CLIP image encoder under `embedder.model.visual.`."""
@dataclass(frozen=True)
class EdmSampling:
    """ComfyUI's ModelSamplingContinuousEDM settings a file implies."""

    prediction: str
    """"v_prediction" (CosXL's `edm_vpred.*` markers) or "edm" (Playground 2.5)."""
    sigma_min: float
    sigma_max: float
    sigma_data: float


@dataclass(frozen=True)
class LatentFormat:
    """ComfyUI's per-channel latent format: the UNet's latent is (latent - mean) * scale / std."""

    name: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]


PLAYGROUND_2_5 = LatentFormat(
    "playground_2_5",
    0.5,
    (-1.6574, 1.886, -1.383, 2.5155),
    (8.4927, 5.9022, 6.5498, 5.2299),
)  # ComfyUI's SDXL_Playground_2_5 latent format (diffusers' latents_mean / latents_std)
PLAYGROUND_SAMPLING = EdmSampling("edm", 0.002, 80.0, 0.5)
"""Playground 2.5's EDM sampling (ComfyUI's SDXL.model_type for `edm_mean` / `edm_std`)."""
EDM_FAMILIES = ("sdxl",)
"""The families whose `edm_vpred.*` markers ComfyUI reads (SDXL.model_type)."""
EDM_SIGMA_MIN = 0.002
"""ComfyUI's sigma_min of an EDM v-prediction file without `edm_vpred.sigma_min`."""
EDM_SIGMA_DATA = 1.0
IP2P_FAMILIES = ("sd1", "sdxl")
"""The families whose 8-channel UNets load as InstructPix2Pix (ComfyUI's SD15_instructpix2pix
and SDXL_instructpix2pix: diffusers-trained, the picture's latent unscaled; CosXL Edit's EDM
files stay refused with the other EDM checkpoints)."""


@dataclass(frozen=True)
class Variant:
    """A checkpoint's family with what sets it apart: prediction type, inpainting input."""

    family: Family
    prediction: str = "epsilon"
    in_channels: int = 4
    zero_snr: bool = False
    unclip: bool = False
    """An SD 2.x unCLIP UNet: a CLIP image embedding (and its noise level) is its class label."""
    edm: EdmSampling | None = None
    """An SDXL model trained on EDM's continuous sigmas (CosXL, Playground 2.5)."""
    latent_format: LatentFormat | None = None
    """A latent space of its own (Playground 2.5's per-channel one); None: the VAE's scale."""

    @property
    def inpaint(self) -> bool:
        return self.in_channels == INPAINT_CHANNELS

    @property
    def ip2p(self) -> bool:
        return self.in_channels == IP2P_CHANNELS

    @property
    def name(self) -> str:
        """The name listed by `nodegraph models`: family key, then -v / -inpaint / -ip2p."""
        name = self.family.key
        if self.prediction == "v_prediction":
            name += "-v"
        if self.inpaint:
            name += "-inpaint"
        if self.ip2p:
            name += "-ip2p"
        if self.unclip:
            name += "-unclip"
        if self.edm:
            name += "-edm"
        if self.latent_format is PLAYGROUND_2_5:
            name += "-playground"
        return name

    def unsupported(self) -> str | None:
        """Why nodegraph cannot run this UNet's input channels (None: it can)."""
        if self.in_channels in (4, INPAINT_CHANNELS):
            return None
        if self.ip2p and self.family.key in IP2P_FAMILIES:
            return None
        if self.ip2p:
            return f"a {self.family.label} InstructPix2Pix model"
        return f"a {self.in_channels}-channel model"

    @property
    def size(self) -> int:
        if self.family.key == "sd2" and self.prediction == "v_prediction":
            return V_PREDICTION_SIZE
        return self.family.size

    def scheduler_config(self) -> dict[str, Any]:
        config = {**self.family.scheduler, "prediction_type": self.prediction}
        if self.zero_snr:
            config["rescale_betas_zero_snr"] = True
        return config
