"""Loading full-size checkpoints: peak resident memory against the weights' size, and load time
against diffusers' `from_single_file` with a local config folder; and the memory budget on the
CPU: two SD 1.5-shaped checkpoints used in turn, with and without `--vram-budget`.

    .venv/bin/python bench/memory.py [--families sd1 sdxl sdxl_refiner] [--dir /tmp/ng-memory]
    .venv/bin/python bench/memory.py --budget 4.5     # only the budget comparison (GiB)

Each family's checkpoint is built once into --dir: the real architecture (SD 1.5, SDXL base,
SDXL refiner) with random fp16 weights, written as one original-layout .safetensors file by the
tests' converter, with the diffusers config folder diffusers needs beside it. Each load runs in
a fresh process (so peaks do not mix) and computes on the CPU in float32, as nodegraph does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, hidden_act="quick_gelu")  # fmt: skip
BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
             num_attention_heads=20, hidden_act="gelu", projection_dim=1280)  # fmt: skip
VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)
SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, sample_size=128,
)  # fmt: skip
FAMILIES = {
    "sd1": {
        "pipeline": "StableDiffusionPipeline",
        "unet": dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                     cross_attention_dim=768, attention_head_dim=8, sample_size=64),
        "towers": {"text_encoder": ("CLIPTextModel", CLIP_L)},
        "scale": 0.18215,
    },
    "sdxl": {
        "pipeline": "StableDiffusionXLPipeline",
        "unet": SDXL_UNET,
        "towers": {"text_encoder": ("CLIPTextModel", CLIP_L),
                   "text_encoder_2": ("CLIPTextModelWithProjection", BIG_G)},
        "scale": 0.13025,
    },
    "sdxl_refiner": {
        "pipeline": "StableDiffusionXLImg2ImgPipeline",
        "unet": {**SDXL_UNET, "block_out_channels": (384, 768, 1536, 1536),
                 "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D",
                                      "CrossAttnDownBlock2D", "DownBlock2D"),
                 "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                    "UpBlock2D"),
                 "attention_head_dim": [6, 12, 24, 24], "transformer_layers_per_block": 4,
                 "cross_attention_dim": 1280, "projection_class_embeddings_input_dim": 2560},
        "towers": {"text_encoder_2": ("CLIPTextModelWithProjection", BIG_G)},
        "scale": 0.13025,
    },
}  # fmt: skip


class Frozen:
    """A module stand-in for the converter: its state dict and config, nothing else."""

    def __init__(self, state: dict[str, torch.Tensor], config) -> None:
        self._state, self.config = state, config

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def _random(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random fp16 weights for a module built on the meta device (no fp32 copy ever made)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) * 0.02).half()
            for k, v in module.state_dict().items()}  # fmt: skip


def build(family: str, folder: Path) -> Path:
    """The family's checkpoint file and its diffusers config folder, made once."""
    import diffusers
    import transformers

    from nodes.formats.tokenizer import clip_tokenizer
    from tests.family_fixtures import original_state_dict

    spec = FAMILIES[family]
    path, config_dir = folder / f"{family}.safetensors", folder / f"{family}.config"
    if path.is_file() and (config_dir / "model_index.json").is_file():
        return path
    parts, index = {}, {"_class_name": spec["pipeline"]}
    with torch.device("meta"):
        unet = diffusers.UNet2DConditionModel(**spec["unet"])
        vae = diffusers.AutoencoderKL(**VAE, scaling_factor=spec["scale"])
    parts["unet"] = Frozen(_random(unet, 1), unet.config)
    parts["vae"] = Frozen(_random(vae, 2), vae.config)
    unet.save_config(config_dir / "unet")
    vae.save_config(config_dir / "vae")
    index |= {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    for i, (component, (cls, kwargs)) in enumerate(spec["towers"].items()):
        config = transformers.CLIPTextConfig(
            vocab_size=49408,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            **kwargs,
        )
        with torch.device("meta"):
            encoder = getattr(transformers, cls)(config)
        parts[component] = Frozen(_random(encoder, 3 + i), config)
        config.save_pretrained(config_dir / component)
        tokenizer = component.replace("text_encoder", "tokenizer")
        tok = clip_tokenizer()
        if component == "text_encoder_2":
            tok.pad_token = "!"
        tok.save_pretrained(config_dir / tokenizer)
        index |= {component: ["transformers", cls], tokenizer: ["transformers", "CLIPTokenizer"]}
    scheduler = "EulerDiscreteScheduler" if "xl" in family else "PNDMScheduler"
    getattr(diffusers, scheduler)(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    ).save_config(config_dir / "scheduler")
    index["scheduler"] = ["diffusers", scheduler]
    (config_dir / "model_index.json").write_text(json.dumps(index))
    from safetensors.torch import save_file

    state = original_state_dict(SimpleNamespace(**parts), family)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(2)
path, config, who, family = sys.argv[1:5]
import diffusers, transformers  # imports are not loading: both sides have them done
from pathlib import Path
from nodes.loading.checkpoints import _single_file
started = time.perf_counter()
if who == "nodegraph":
    parts = _single_file(Path(path), "safetensors", {{}})
    modules = [parts.unet, parts.vae, *[t[1] for t in parts.towers]]
else:
    cls = getattr(diffusers, {pipelines!r}[family])
    pipe = cls.from_single_file(path, config=config, local_files_only=True,
                                torch_dtype=torch.float32)
    modules = [m for m in (pipe.unet, pipe.vae, getattr(pipe, "text_encoder", None),
                           getattr(pipe, "text_encoder_2", None)) if m is not None]
modules = [m.to(torch.float32) for m in modules]
seconds = time.perf_counter() - started
weights = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"seconds": seconds, "peak": peak, "weights": weights}}))
"""


def measure(path: Path, family: str, who: str) -> dict:
    pipelines = {k: v["pipeline"] for k, v in FAMILIES.items()}
    code = MEASURE.format(root=str(ROOT), pipelines=pipelines)
    config = str(path.with_name(path.stem + ".config"))
    done = subprocess.run([sys.executable, "-c", code, str(path), config, who, family],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


IN_TURN = r"""
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(2)
folder, budget = sys.argv[1], float(sys.argv[2])
from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodegraph.registry import default_registry
from nodes.loading.residency import RESIDENCY

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

options = {{"models": [folder], "device": "cpu", "vram_budget": budget or None}}
registry = default_registry()
registry.configure(options)
executor = Executor(registry)
settings = RunSettings(output_dir=Path(folder) / "out", temp_dir=Path(folder) / "tmp",
                       options=options)
steps = []
for turn, name in enumerate(["sd1.safetensors", "sd1_b.safetensors"] * 2):
    n = lambda cls, **inputs: {{"class_type": cls, "inputs": inputs}}
    wf = {{
        "ckpt": n("CheckpointLoaderSimple", ckpt_name=name),
        "pos": n("CLIPTextEncode", text="a lighthouse at dusk", clip=["ckpt", 1]),
        "neg": n("CLIPTextEncode", text="", clip=["ckpt", 1]),
        "empty": n("EmptyLatentImage", width=64, height=64, batch_size=1),
        "ks": n("KSampler", model=["ckpt", 0], seed=turn, steps=1, cfg=2.0,
                sampler_name="euler", scheduler="normal", positive=["pos", 0],
                negative=["neg", 0], latent_image=["empty", 0], denoise=1.0),
        "decode": n("VAEDecode", samples=["ks", 0], vae=["ckpt", 2]),
        "save": n("SaveImage", images=["decode", 0], filename_prefix="turn"),
    }}
    started = time.perf_counter()
    result = executor.run(wf, settings)
    assert result.ok, result.error
    steps.append({{"model": name, "seconds": time.perf_counter() - started, "rss": rss()}})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"steps": steps, "peak": peak, "restores": RESIDENCY.restores}}))
"""


def in_turn(folder: Path, budget: float) -> dict:
    """Two SD 1.5-shaped checkpoints in turn (A, B, A, B: encode, one step, decode), in a
    fresh process, within `budget` GiB (0: none)."""
    code = IN_TURN.format(root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code, str(folder), str(budget)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def budget_report(folder: Path, budget: float) -> None:
    path = build("sd1", folder)
    second = folder / "sd1_b.safetensors"
    if not second.exists():
        os.link(path, second)  # another file to the store: loaded as a second model
    gib = 2**30
    weights = measure(path, "sd1", "nodegraph")["weights"]
    print(f"two SD 1.5 checkpoints in turn (A, B, A, B), weights {weights / gib:.2f} GiB each "
          "as float32:")  # fmt: skip
    for label, limit in (("no budget", 0.0), (f"--vram-budget {budget:g}", budget)):
        m = in_turn(folder, limit)
        rows = ", ".join(f"{s['rss'] / gib:.2f}" for s in m["steps"])
        times = ", ".join(f"{s['seconds']:.1f}" for s in m["steps"])
        print(f"  {label:<20} peak RSS {m['peak'] / gib:5.2f} GiB = {m['peak'] / weights:.2f} x "
              f"one model's weights; RSS after each turn {rows} GiB; seconds {times}; "
              f"{m['restores']} modules read again")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ng-memory"))
    parser.add_argument("--budget", type=float, default=None, metavar="GB",
                        help="only compare two checkpoints in turn with and without this budget")
    args = parser.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    if args.budget is not None:
        budget_report(args.dir, args.budget)
        return 0
    gib = 2**30
    for family in args.families:
        path = build(family, args.dir)
        ours, theirs = measure(path, family, "nodegraph"), measure(path, family, "diffusers")
        w = ours["weights"]
        print(f"{family}: file {path.stat().st_size / gib:.2f} GiB fp16, "
              f"weights {w / gib:.2f} GiB as float32")  # fmt: skip
        for who, m in (("nodegraph", ours), ("diffusers", theirs)):
            print(f"  {who:<10} peak RSS {m['peak'] / gib:6.2f} GiB = {m['peak'] / w:.2f} x "
                  f"weights, load {m['seconds']:6.1f} s")  # fmt: skip
        print(f"  ratio nodegraph / diffusers: peak {ours['peak'] / theirs['peak']:.2f}, "
              f"time {ours['seconds'] / theirs['seconds']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
