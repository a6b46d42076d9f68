"""The tiny family models of tests/family_fixtures.py, and their original-layout writer.

The oracle: diffusers' own single-file loader (`from_single_file`, its LDM->diffusers
converters) reads each written file back to exactly the weights of the built pipeline.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests import family_fixtures as ff

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are tiny and the test machine is small and shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _states(pipe) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: getattr(pipe, name).state_dict()
        for name in COMPONENTS
        if getattr(pipe, name, None) is not None
    }


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys(), what
    for comp, state in want.items():
        assert got[comp].keys() == state.keys(), f"{what}: {comp}"
        bad = [k for k, v in state.items() if not torch.equal(got[comp][k], v)]
        assert not bad, f"{what}: {comp} differs at {bad[:5]}"


@pytest.mark.parametrize("family", list(ff.FAMILIES))
def test_diffusers_single_file_loader_reads_the_original_file_back(family: str, tmp_path: Path):
    """diffusers' single-file loader is the oracle for every family and every component.

    It is a complete one even where its converters carry real-size constants: its OpenCLIP
    converter ignores SD2's last resblock by the name `resblocks.23` (real size) and so converts
    our extra resblock (`resblocks.2`) too, but its meta-loader drops keys the model lacks;
    it splits `in_proj_*` by `text_projection.shape[0]`, which is the tower width here as in
    real files. For SDXL base it tells the two towers apart by width (the CLIP-L key's width
    must equal the model's), so the tiny towers have different widths (32 and 64).
    What the oracle cannot see (the extra resblock, 4-D VAE attention, block numbering where
    diffusers accepts both places) is checked by the tests below."""
    import diffusers

    folder = ff.write_diffusers(family, tmp_path / "diffusers")
    path = ff.write_single_file(family, tmp_path / f"{family}.safetensors")
    cls = getattr(diffusers, ff.FAMILIES[family].pipeline)
    built = ff.build_pipeline(family)
    assert type(built) is cls
    want = _states(built)
    extra = {} if "XL" in cls.__name__ else {"safety_checker": None}
    loaded = cls.from_single_file(str(path), config=str(folder), local_files_only=True, **extra)
    _assert_same(_states(loaded), want, family)
    # the diffusers folder reads back the same too
    again = cls.from_pretrained(str(folder), local_files_only=True, **extra)
    _assert_same(_states(again), want, f"{family} folder")
    for tower in ff.FAMILIES[family].towers:
        tokenizer = getattr(again, tower.tokenizer)
        assert len(tokenizer) == ff.VOCAB
        want = "!" if tower.style == "open_clip" else "<|endoftext|>"
        assert tokenizer.pad_token == want
        assert tokenizer.pad_token_id == (0 if want == "!" else 49407)


def _block_index(keys, pattern: str) -> set[int]:
    return {int(m[1]) for k in keys if (m := re.fullmatch(pattern, k))}


@pytest.mark.parametrize("family", list(ff.FAMILIES))
def test_original_layout_names(family: str):
    """The key names and shapes of real checkpoints, where diffusers' reader is lenient."""
    fam = ff.FAMILIES[family]
    pipe = ff.build_pipeline(family)
    sd = ff.original_state_dict(pipe, family)
    unet = "model.diffusion_model."
    assert sd[unet + "input_blocks.0.0.weight"].shape[1] == fam.in_channels
    assert sd[unet + "out.2.weight"].shape[0] == 4
    # ldm: per level `layers` blocks (+1 downsampler but on the last); up blocks `layers + 1`,
    # the upsampler third in a block with attention ([res, attention, upsample]), else second
    n = len(fam.unet["block_out_channels"])
    assert _block_index(sd, re.escape(unet) + r"input_blocks\.(\d+)\..*") == set(range(2 * n))
    assert _block_index(sd, re.escape(unet) + r"output_blocks\.(\d+)\..*") == set(range(2 * n))
    for level, kind in enumerate(fam.unet["up_block_types"][:-1]):
        pos = 2 if kind.startswith("CrossAttn") else 1
        assert f"{unet}output_blocks.{2 * level + 1}.{pos}.conv.weight" in sd
    for level in range(n - 1):
        assert f"{unet}input_blocks.{2 * level + 2}.0.op.weight" in sd
    # SDXL's pooled text and size embedding, or an unCLIP model's image embedding
    has_label = family.startswith("sdxl") or "class_embed_type" in fam.unet
    assert (unet + "label_emb.0.0.weight" in sd) == has_label
    if family.startswith("sdxl"):
        ids = 5 if family == "sdxl_refiner" else 6
        pooled = ff.OPEN_CLIP_G["width"]
        assert sd[unet + "label_emb.0.0.weight"].shape[1] == ids * ff.TIME_DIM + pooled
    proj = sd[unet + "middle_block.1.proj_in.weight"]
    assert proj.ndim == (4 if family.startswith("sd1") else 2)  # SD1 projects with 1x1 convs
    # the VAE's mid-block attention is 1x1 convolutions in the original
    for part in ("encoder", "decoder"):
        for name in ("q", "k", "v", "proj_out"):
            assert sd[f"first_stage_model.{part}.mid.attn_1.{name}.weight"].ndim == 4
    assert "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight" in sd
    assert "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight" in sd
    # text towers
    prefixes = {"model.diffusion_model.", "first_stage_model."}
    if fam.clip_vision_prefix is not None:  # an unCLIP file's image encoder (OpenCLIP names)
        prefixes.add(fam.clip_vision_prefix)
        assert fam.clip_vision_prefix + "proj" in sd
    for tower in fam.towers:
        prefixes.add(tower.prefix)
        state = getattr(pipe, tower.component).state_dict()
        keys = [k for k in sd if k.startswith(tower.prefix)]
        if tower.style == "clip_l":
            assert tower.prefix.endswith(".transformer.")
            want = {tower.prefix + "text_model." + k for k in state}
            assert set(keys) == want
            continue
        p = tower.prefix
        w = tower.width
        assert sd[p + "token_embedding.weight"].shape == (ff.VOCAB, w)
        assert sd[p + "positional_embedding"].shape == (ff.POSITIONS, w)
        assert sd[p + "text_projection"].shape == (w, w)
        blocks = _block_index(keys, re.escape(p) + r"transformer\.resblocks\.(\d+)\..*")
        assert blocks == set(range(tower.layers + tower.extra_layers))
        assert sd[p + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * w, w)
        assert sd[p + "transformer.resblocks.0.mlp.c_fc.weight"].shape == (4 * w, w)
        # every tensor accounted for: q/k/v (6) merge into 2, plus the extras
        per_block = 12
        projection = 0 if tower.projection else 1
        assert len(keys) == len(state) - 4 * tower.layers + projection + (
            per_block * tower.extra_layers
        )
    assert {k for k in sd if not any(k.startswith(p) for p in prefixes)} == set()
    assert len([k for k in sd if k.startswith(unet)]) == len(pipe.unet.state_dict())
    assert len([k for k in sd if k.startswith("first_stage_model.")]) == len(pipe.vae.state_dict())


def test_sd2_original_has_one_resblock_more_than_diffusers():
    sd = ff.original_state_dict(ff.build_pipeline("sd2"), "sd2")
    layers = ff.FAMILIES["sd2"].towers[0].layers
    assert ff.build_pipeline("sd2").text_encoder.config.num_hidden_layers == layers
    blocks = _block_index(sd, r"cond_stage_model\.model\.transformer\.resblocks\.(\d+)\..*")
    assert max(blocks) == layers  # OpenCLIP-H's last, which SD2 never reads


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path):
    for family in ("sd1", "sd2", "sdxl"):
        a, b = ff.build_pipeline(family, seed=3), ff.build_pipeline(family, seed=3)
        _assert_same(_states(a), _states(b), family)
        c = ff.build_pipeline(family, seed=4)
        for comp, state in _states(a).items():
            other = _states(c)[comp]
            assert any(not torch.equal(v, other[k]) for k, v in state.items()), comp
    one = load_file(str(ff.write_single_file("sd2", tmp_path / "a.safetensors", seed=5)))
    two = load_file(str(ff.write_single_file("sd2", tmp_path / "b.safetensors", seed=5)))
    assert one.keys() == two.keys()
    assert all(torch.equal(v, two[k]) for k, v in one.items())
    three = load_file(str(ff.write_single_file("sd2", tmp_path / "c.safetensors", seed=6)))
    extra = "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight"
    assert not torch.equal(one[extra], three[extra])


def _v_marker(sd: dict[str, torch.Tensor]) -> tuple[int, torch.Tensor]:
    pattern = r"model\.diffusion_model\.output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias"
    last = max(_block_index(sd, pattern))
    return last, sd[f"model.diffusion_model.output_blocks.{last}.1.transformer_blocks.0.norm1.bias"]


def test_v_prediction_marker_tells_sd2_v_from_sd2():
    """ComfyUI's weight heuristic: the norm bias of the last output block with attention has
    a population std above 0.09 in 768-v SD2, below it in 512-epsilon SD2."""
    for family, v in (("sd2", False), ("sd2_v", True)):
        pipe = ff.build_pipeline(family)
        assert pipe.scheduler.config.prediction_type == ("v_prediction" if v else "epsilon")
        last, bias = _v_marker(ff.original_state_dict(pipe, family))
        assert last == 3  # (UpBlock2D, CrossAttnUpBlock2D) x 2 blocks: output_blocks 0..3
        assert (torch.std(bias, unbiased=False).item() > 0.09) == v
    for family in ("sd1", "sdxl"):
        _, bias = _v_marker(ff.original_state_dict(ff.build_pipeline(family), family))
        assert torch.std(bias, unbiased=False).item() < 0.09


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_files(dtype: torch.dtype, tmp_path: Path):
    path = ff.write_single_file("sdxl", tmp_path / "half.safetensors", dtype=dtype)
    with safe_open(str(path), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert dtypes == {"F16" if dtype == torch.float16 else "BF16"}
    want = ff.original_state_dict(ff.build_pipeline("sdxl"), "sdxl")
    got = load_file(str(path))
    assert got.keys() == want.keys()
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(got[key], want[key].to(dtype))


def test_families_configs():
    """The structure each family keeps from the real one."""
    for family in ff.FAMILIES:
        fam = ff.FAMILIES[family]
        pipe = ff.build_pipeline(family)
        unet, vae = pipe.unet.config, pipe.vae.config
        assert ff.IMAGE_SIZE[family] == unet.sample_size * 2 ** (len(vae.block_out_channels) - 1)
        assert ff.IMAGE_SIZE[family] == vae.sample_size
        assert all(c % 32 == 0 for c in (*unet.block_out_channels, *vae.block_out_channels))
        assert unet.norm_num_groups == vae.norm_num_groups == 32
        want = 9 if family.endswith("inpaint") else 8 if family.endswith("ip2p") else 4
        assert unet.in_channels == want
        assert vae.scaling_factor == (0.13025 if family.startswith("sdxl") else 0.18215)
        widths = [getattr(pipe, t.component).config.hidden_size for t in fam.towers]
        if family.startswith("sdxl") and family != "sdxl_refiner":
            assert unet.cross_attention_dim == sum(widths)
        else:
            assert unet.cross_attention_dim == widths[-1]
        for tower in fam.towers:
            config = getattr(pipe, tower.component).config
            assert config.vocab_size == 49408 and config.max_position_embeddings == 77
            act = "quick_gelu" if tower.style == "clip_l" else "gelu"
            assert config.hidden_act == act
            assert config.num_attention_heads == max(1, config.hidden_size // 64)
        sched = pipe.scheduler.config
        assert (sched.beta_start, sched.beta_end, sched.beta_schedule) == (
            0.00085, 0.012, "scaled_linear"
        )  # fmt: skip
        assert sched.steps_offset == 1 and sched.num_train_timesteps == 1000
    refiner = ff.build_pipeline("sdxl_refiner")
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert refiner.config.requires_aesthetics_score is True
    assert refiner.config.force_zeros_for_empty_prompt is False
    assert ff.build_pipeline("sdxl").scheduler.config.timestep_spacing == "leading"


def test_cached_writers_reuse_their_files():
    a = ff.single_file("sd1")
    assert ff.single_file("sd1") == a and a.is_file()
    assert ff.single_file("sd1", dtype=torch.float16) != a
    folder = ff.diffusers_folder("sd1")
    assert ff.diffusers_folder("sd1") == folder and (folder / "model_index.json").is_file()


def test_a_tiny_pipeline_runs():
    """The SDXL base makes a picture of the family's size (the towers, time ids and UNet fit)."""
    pipe = ff.build_pipeline("sdxl")
    out = pipe(
        "a red disc",
        num_inference_steps=1,
        guidance_scale=1.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 3, ff.IMAGE_SIZE["sdxl"], ff.IMAGE_SIZE["sdxl"])
