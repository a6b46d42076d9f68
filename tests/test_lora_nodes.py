"""LoraLoader / LoraLoaderModelOnly on tiny checkpoints: equal to the weights merged by hand,
strength 0 equal to none, the loaded checkpoint untouched, unmatched keys reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from nodes.loading import checkpoints as C
from nodes.loading.folders import use_model_dirs
from nodes.loading.patching import patched
from tests import diffusion_fixtures as df
from tests import family_fixtures as ff
from tests.lora_fixtures import RANK, make_lora, merged


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lora_models")
    (root / "checkpoints").mkdir()
    (root / "loras").mkdir()
    pipe = ff.build_pipeline("sd1")
    tensors, deltas = make_lora(
        pipe, original_names=False, text_prefixes={"text_encoder": "lora_te"}
    )
    save_file(tensors, str(root / "loras" / "sd1_style.safetensors"))
    foreign = {"lora_unet_no_such_block_to_q.lora_up.weight": torch.zeros(4, RANK),
               "lora_unet_no_such_block_to_q.lora_down.weight": torch.zeros(RANK, 4)}  # fmt: skip
    save_file({**tensors, **foreign}, str(root / "loras" / "with_foreign_keys.safetensors"))
    (root / "checkpoints" / "sd1.safetensors").symlink_to(ff.single_file("sd1"))
    hand = merged(pipe, deltas, 0.8, 0.6)
    save_file(
        ff.original_state_dict(hand, "sd1"), str(root / "checkpoints" / "sd1_merged.safetensors")
    )
    xl = ff.build_pipeline("sdxl")
    prefixes = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    xl_tensors, _ = make_lora(xl, original_names=True, text_prefixes=prefixes)
    save_file(xl_tensors, str(root / "loras" / "sdxl_style.safetensors"))
    (root / "checkpoints" / "sdxl.safetensors").symlink_to(ff.single_file("sdxl"))
    use_model_dirs([root])
    return root


settings = df.folder_settings
executor = df.folder_executor


def picture(ckpt: str, lora: dict | None) -> dict:
    """A native txt2img graph, with a LoraLoader between the checkpoint and its users."""
    model, clip = ["ckpt", 0], ["ckpt", 1]
    wf = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if lora is not None:
        wf["lora"] = {"class_type": "LoraLoader",
                      "inputs": {"model": model, "clip": clip, **lora}}  # fmt: skip
        model, clip = ["lora", 0], ["lora", 1]
    return wf | {
        "pos": {"class_type": "TextEncode", "inputs": {"clip": clip, "text": "a red circle"}},
        "neg": {"class_type": "TextEncode", "inputs": {"clip": clip, "text": ""}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}},
        "noise": {"class_type": "AddNoise",
                  "inputs": {"model": model, "latent": ["empty", 0], "seed": 3, "steps": 4}},
        "denoise": {"class_type": "Denoise",
                    "inputs": {"model": model, "noisy": ["noise", 0], "positive": ["pos", 0],
                               "negative": ["neg", 0]}},
        "decode": {"class_type": "VAEDecode",
                   "inputs": {"samples": ["denoise", 0], "vae": ["ckpt", 2]}},
        "show": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
    }  # fmt: skip


def image(executor, wf, settings) -> np.ndarray:
    result = executor.run(wf, settings)
    assert result.ok, result.error
    return result.outputs["decode"][0].cpu().numpy()


def test_a_lora_equals_its_weights_merged_by_hand_and_leaves_the_checkpoint_alone(
    executor, settings
):
    before = image(executor, picture("sd1.safetensors", None), settings)
    lora = {"lora_name": "sd1_style.safetensors", "strength_model": 0.8, "strength_clip": 0.6}
    with_lora = image(executor, picture("sd1.safetensors", lora), settings)
    by_hand = image(executor, picture("sd1_merged.safetensors", None), settings)
    assert np.abs(with_lora - by_hand).max() <= 1e-5
    assert np.abs(with_lora - before).max() > 1e-3  # the LoRA changed the picture
    executor.cache.clear()
    after = image(executor, picture("sd1.safetensors", None), settings)
    assert np.array_equal(after, before)  # the loaded checkpoint's weights are untouched
    zero = {**lora, "strength_model": 0.0, "strength_clip": 0.0}
    assert np.array_equal(image(executor, picture("sd1.safetensors", zero), settings), before)


def test_keys_that_match_nothing_are_reported_with_a_count_and_an_example(executor, settings):
    lora = {"lora_name": "with_foreign_keys.safetensors", "strength_model": 1.0,
            "strength_clip": 1.0}  # fmt: skip
    result = executor.run(picture("sd1.safetensors", lora), settings)
    assert result.ok, result.error
    warnings = [w.message for w in result.warnings if w.node_id == "lora"]
    assert warnings == [
        "1 of the LoRA's modules match no weight of this model (e.g. lora_unet_no_such_block_to_q)"
    ]


def test_an_sdxl_kohya_lora_with_original_unet_names_patches_both_text_towers(models):
    """kohya's SDXL files name UNet modules in the original layout and the towers te1 / te2."""
    from nodes.loading.lora_nodes import apply_lora

    class Ctx:
        class settings:
            options = {"device": "cpu"}

        warnings: list[str] = []

        def warn(self, message):
            self.warnings.append(message)

    ctx = Ctx()
    model, clip, _ = C.load_checkpoint("sdxl.safetensors", {"device": "cpu"})
    pipe = ff.build_pipeline("sdxl")
    prefixes = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    _, deltas = make_lora(pipe, original_names=True, text_prefixes=prefixes)
    lora_model, lora_clip = apply_lora(ctx, "sdxl_style.safetensors", model, clip, 0.5, 2.0)
    assert ctx.warnings == []
    touched = 0
    encoders = {"text_encoder": lora_clip.towers[0], "text_encoder_2": lora_clip.towers[1]}
    for (component, name), delta in deltas.items():
        if component == "unet":
            module, patches, strength = lora_model.unet, lora_model.patches, 0.5
        else:
            tower = encoders[component]
            module, strength = tower.encoder, 2.0
            patches = [p for key, p in lora_clip.patches if key == tower.key]
        original = dict(module.named_parameters())[name].detach().clone()
        with patched(module, patches):
            now = dict(module.named_parameters())[name]
            assert torch.allclose(now, original + strength * delta, atol=1e-6), name
        assert torch.equal(dict(module.named_parameters())[name], original)
        touched += 1
    assert touched == len(deltas) >= 7
