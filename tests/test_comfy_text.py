"""ComfyUI's text nodes: prompt syntax, chunks, weights, embeddings, clip skip, SDXL encoders."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from nodegraph import RunSettings
from nodegraph.executor import Executor
from nodes.conditioning.prompt_weights import Chunking, parse_weights, tokenize
from nodes.formats.tokenizer import clip_tokenizer
from nodes.loading.folders import use_model_dirs
from tests import family_fixtures as ff
from tests.diffusion_fixtures import diffusion_registry

CLIP_L = Chunking(pad=49407)


def test_weights_follow_comfyui():
    assert parse_weights("a (b:1.5) c") == [("a ", 1.0), ("b", 1.5), (" c", 1.0)]
    assert parse_weights("((x))") == [("x", pytest.approx(1.21))]
    assert parse_weights("(a (b) c:2)") == [("a ", 2.0), ("b", pytest.approx(2.2)), (" c", 2.0)]
    assert parse_weights("(x:oops)") == [("x:oops", pytest.approx(1.1))]  # not a number
    assert parse_weights("[x]") == [("[x]", 1.0)]  # brackets mean nothing to ComfyUI


def ids(chunks):
    return [[t.value for t in chunk] for chunk in chunks]


def test_escapes_chunks_and_padding():
    tok = clip_tokenizer()
    (chunk,), _ = tokenize(tok, "", CLIP_L, lambda n: None)
    assert ids([chunk]) == [[49406, 49407] + [49407] * 75]
    chunks, _ = tokenize(tok, r"a \(photo\)", Chunking(pad=0), lambda n: None)
    assert ids(chunks)[0][:6] == [49406, *tok("a (photo)")["input_ids"][1:-1], 49407]
    assert ids(chunks)[0][-1] == 0 and all(t.weight == 1.0 for t in chunks[0])
    long = ", ".join(["red circle"] * 30)  # 3 tokens each, with the commas about 89 tokens
    chunks, _ = tokenize(tok, long, CLIP_L, lambda n: None)
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    assert ids(chunks)[0][0] == ids(chunks)[1][0] == 49406 and ids(chunks)[0][76] == 49407
    # a weighted piece shorter than 8 tokens is never cut at a chunk's end: it moves whole
    filler = " ".join(["dog"] * 73)  # 73 tokens: 2 places left in the first chunk
    chunks, _ = tokenize(tok, filler + " (red round circle:1.3)", CLIP_L, lambda n: None)
    first = [t for t in chunks[0] if t.weight != 1.0]
    second = [t for t in chunks[1] if t.weight != 1.0]
    assert first == [] and len(second) == 3


def test_embedding_names_end_at_whitespace_and_commas():
    vec = torch.ones(2, 768)
    found = {"style": vec}
    chunks, missing = tokenize(clip_tokenizer(), "a embedding:style, b embedding:nope c", CLIP_L,
                               found.get)  # fmt: skip
    values = [t.value for t in chunks[0]]
    assert sum(1 for v in values if torch.is_tensor(v)) == 2 and missing == ["nope"]
    tok = clip_tokenizer()
    comma, b, c = (tok(w)["input_ids"][1] for w in (",", "b", "c"))
    plain = [v for v in values if not torch.is_tensor(v)]
    assert plain[:6] == [49406, tok("a")["input_ids"][1], comma, b, c, 49407]


# --------------------------------------------------------------------------- on tiny models


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("text_models")
    for kind in ("checkpoints", "embeddings"):
        (root / kind).mkdir()
    for family in ("sd1", "sdxl", "sdxl_refiner"):
        (root / "checkpoints" / f"{family}.safetensors").symlink_to(ff.single_file(family))
    g = torch.Generator().manual_seed(5)
    emb = torch.randn(2, 32, generator=g)
    torch.save({"string_to_param": {"*": emb}, "name": "ink"}, root / "embeddings" / "ink.pt")
    (root / "embeddings" / "xl").mkdir()
    both = {"clip_l": torch.randn(1, 32, generator=g), "clip_g": torch.randn(1, 64, generator=g)}
    save_file(both, str(root / "embeddings" / "xl" / "both.safetensors"))
    save_file({"emb_params": torch.randn(1, 1024)}, str(root / "embeddings" / "sd2ish.safetensors"))
    use_model_dirs([root])
    return root


@pytest.fixture(scope="module")
def executor(models) -> Executor:
    return Executor(diffusion_registry())


@pytest.fixture
def settings(tmp_path, models) -> RunSettings:
    opts = {"models": [str(models)], "device": "cpu"}
    return RunSettings(output_dir=tmp_path / "o", temp_dir=tmp_path / "t", options=opts)


def encode(executor, settings, ckpt: str, node: dict, skip: int | None = None):
    """Run one text node on a checkpoint's CLIP; its conditioning and the run's warnings."""
    clip = ["ckpt", 1]
    wf = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}}}
    if skip is not None:
        wf["skip"] = {"class_type": "CLIPSetLastLayer",
                      "inputs": {"clip": clip, "stop_at_clip_layer": skip}}  # fmt: skip
        clip = ["skip", 0]
    wf["text"] = {"class_type": node["class_type"], "inputs": {"clip": clip, **node["inputs"]}}
    wf["show"] = {"class_type": "ShowValue", "inputs": {"value": ["text", 0]}}
    executor.cache.clear()  # outputs of every node, not answers from the cache
    result = executor.run(wf, settings)
    if not result.ok:
        raise RuntimeError(result.error.message)
    (cond,) = result.outputs["text"][0].conds  # one Cond per text
    return cond, [w.message for w in result.warnings]


def prompt(text: str) -> dict:
    return {"class_type": "CLIPTextEncode", "inputs": {"text": text}}


def test_plain_prompts_equal_diffusers_and_weights_follow_comfyuis_formula(executor, settings):
    pipe = ff.build_pipeline("sd1")
    ours, _ = encode(executor, settings, "sd1.safetensors", prompt("a red circle"))
    theirs, _ = pipe.encode_prompt("a red circle", "cpu", 1, False)
    assert torch.allclose(ours.embeds, theirs, atol=1e-5)
    weighted, _ = encode(executor, settings, "sd1.safetensors", prompt("a (red:1.5) circle"))
    empty, _ = pipe.encode_prompt("", "cpu", 1, False)
    red = 2  # start, "a", "red": the weighted position
    expected = theirs.clone()
    expected[0, red] = (theirs[0, red] - empty[0, red]) * 1.5 + empty[0, red]
    assert torch.allclose(weighted.embeds, expected, atol=1e-5)


def test_clip_skip_equals_diffusers_clip_skip(executor, settings):
    pipe = ff.build_pipeline("sd1")
    ours, _ = encode(executor, settings, "sd1.safetensors", prompt("a red circle"), skip=-2)
    # diffusers' clip_skip=1, computed as encode_prompt does it (its own call reaches for
    # text_encoder.text_model, which transformers 5's CLIPTextModel no longer has)
    ids = pipe.tokenizer("a red circle", padding="max_length", return_tensors="pt").input_ids
    out = pipe.text_encoder(ids, output_hidden_states=True)
    theirs = pipe.text_encoder.final_layer_norm(out.hidden_states[-2])
    assert torch.allclose(ours.embeds, theirs, atol=1e-5)
    plain, _ = encode(executor, settings, "sd1.safetensors", prompt("a red circle"))
    assert not torch.allclose(plain.embeds, ours.embeds, atol=1e-3)


def test_an_embedding_equals_diffusers_load_textual_inversion(executor, settings, models):
    pipe = ff.build_pipeline("sd1")
    pipe.tokenizer = copy.deepcopy(pipe.tokenizer)  # the fixtures share their tokenizers
    pipe.load_textual_inversion(str(models / "embeddings" / "ink.pt"), token="<ink>")
    theirs, _ = pipe.encode_prompt("a photo of <ink> style", "cpu", 1, False)
    ours, warnings = encode(executor, settings, "sd1.safetensors",
                            prompt("a photo of embedding:ink style"))  # fmt: skip
    assert warnings == []
    assert torch.allclose(ours.embeds, theirs, atol=1e-5)


def test_sdxl_embeddings_missing_ones_and_wrong_widths(executor, settings):
    _, warnings = encode(executor, settings, "sdxl.safetensors",
                         prompt("embedding:xl/both, embedding:gone"))  # fmt: skip
    assert warnings == ["embedding not found in the embeddings folders, ignored: gone"]
    # an SD 1.x embedding (CLIP-L's width) in an SDXL prompt: used by CLIP-L, not by bigG
    _, warnings = encode(executor, settings, "sdxl.safetensors", prompt("embedding:ink"))
    assert warnings == ["embedding ink.pt has no vectors for tower g"]
    with pytest.raises(
        RuntimeError, match=r"embedding sd2ish\.safetensors .* another model family"
    ):
        encode(executor, settings, "sdxl.safetensors", prompt("embedding:sd2ish"))


def test_sdxl_text_nodes_equal_diffusers_and_carry_their_conditions(executor, settings):
    pipe = ff.build_pipeline("sdxl")
    ours, _ = encode(executor, settings, "sdxl.safetensors", prompt("a red circle"))
    embeds, _, pooled, _ = pipe.encode_prompt("a red circle", device="cpu",
                                              do_classifier_free_guidance=False)  # fmt: skip
    assert ours.embeds.shape == (1, 77, 96)
    assert torch.allclose(ours.embeds, embeds, atol=1e-5)
    assert torch.allclose(ours.pooled, pooled, atol=1e-5)
    node = {"class_type": "CLIPTextEncodeSDXL",
            "inputs": {"width": 2048, "height": 1536, "crop_w": 0, "crop_h": 8,
                       "target_width": 1024, "target_height": 768,
                       "text_g": "a red circle", "text_l": ", ".join(["blue"] * 60)}}  # fmt: skip
    sized, _ = encode(executor, settings, "sdxl.safetensors", node)
    assert sized.embeds.shape == (1, 154, 96)  # text_l took two chunks: text_g padded to two
    assert sized.extras == {"width": 2048, "height": 1536, "crop_w": 0, "crop_h": 8,
                            "target_width": 1024, "target_height": 768}  # fmt: skip
    assert torch.allclose(sized.embeds[:, :77, 32:], ours.embeds[:, :, 32:], atol=1e-5)
    refiner = {
        "class_type": "CLIPTextEncodeSDXLRefiner",
        "inputs": {"ascore": 2.5, "width": 1024, "height": 1024, "text": "a red circle"},
    }
    cond, _ = encode(executor, settings, "sdxl_refiner.safetensors", refiner)
    assert cond.embeds.shape == (1, 77, 64) and cond.pooled.shape == (1, 64)
    assert cond.extras == {"aesthetic_score": 2.5, "width": 1024, "height": 1024}


def sdxl_sample(executor, settings, positive: dict, ckpt: str = "sdxl.safetensors"):
    """KSampler on an SDXL checkpoint with the given positive text node; the latent."""
    wf = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "pos": {"class_type": positive["class_type"],
                "inputs": {"clip": ["ckpt", 1], **positive["inputs"]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}},
        "sample": {"class_type": "KSampler",
                   "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0],
                              "negative": ["neg", 0], "latent_image": ["empty", 0], "steps": 3,
                              "seed": 4, "cfg": 5.0}},
        "show": {"class_type": "ShowValue", "inputs": {"value": ["sample", 0]}},
    }  # fmt: skip
    result = executor.run(wf, settings)
    assert result.ok, result.error
    return result.outputs["sample"][0].samples


def test_sdxl_size_and_aesthetic_conditions_reach_the_unet(executor, settings):
    text = "a red circle"
    plain = sdxl_sample(executor, settings, prompt(text))
    sizes = {"crop_w": 0, "crop_h": 0, "text_g": text, "text_l": text}
    as_latent = {"width": 64, "height": 64, "target_width": 64, "target_height": 64, **sizes}
    same = sdxl_sample(
        executor, settings, {"class_type": "CLIPTextEncodeSDXL", "inputs": as_latent}
    )
    # CLIPTextEncode's SDXL sizes default to the latent's, in pixels (as ComfyUI's)
    assert torch.equal(plain, same)
    big = {**as_latent, "width": 1024, "height": 1024, "target_width": 1024, "target_height": 1024}
    other = sdxl_sample(executor, settings, {"class_type": "CLIPTextEncodeSDXL", "inputs": big})
    assert (other - plain).abs().max() > 1e-4
    refiner = "sdxl_refiner.safetensors"
    default = sdxl_sample(executor, settings, prompt(text), refiner)
    node = {"class_type": "CLIPTextEncodeSDXLRefiner",
            "inputs": {"ascore": 6.0, "width": 64, "height": 64, "text": text}}  # fmt: skip
    assert torch.equal(sdxl_sample(executor, settings, node, refiner), default)  # 6.0 is default
    node["inputs"]["ascore"] = 1.0
    assert (sdxl_sample(executor, settings, node, refiner) - default).abs().max() > 1e-4


def advanced(latent: list, **inputs) -> dict:
    defaults = {"add_noise": "enable", "noise_seed": 4, "steps": 6, "cfg": 5.0,
                "sampler_name": "euler", "scheduler": "normal", "start_at_step": 0,
                "end_at_step": 10000, "return_with_leftover_noise": "disable"}  # fmt: skip
    return {"class_type": "KSamplerAdvanced",
            "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                       "latent_image": latent, **defaults, **inputs}}  # fmt: skip


def test_ksampler_advanced_hands_over_with_its_leftover_noise(executor, settings):
    """KSamplerAdvanced over the whole schedule is KSampler; cut at step 4 with the leftover
    noise and continued from step 4 without new noise, it is the same walk."""
    loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}}
    base = {
        "ckpt": loader,
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a cat"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64}},
        "plain": {"class_type": "KSampler",
                  "inputs": {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                             "latent_image": ["empty", 0], "steps": 6, "seed": 4, "cfg": 5.0,
                             "scheduler": "normal"}},
        "whole": advanced(["empty", 0]),
        "first": advanced(["empty", 0], end_at_step=4, return_with_leftover_noise="enable"),
        "rest": advanced(["first", 0], add_noise="disable", start_at_step=4),
        "cut": advanced(["empty", 0], end_at_step=4),
    }  # fmt: skip
    base["show"] = {"class_type": "ShowValue", "inputs": {"value": ["rest", 0]}}
    base["show2"] = {"class_type": "ShowValue", "inputs": {"value": ["cut", 0]}}
    base["show3"] = {"class_type": "ShowValue", "inputs": {"value": ["plain", 0]}}
    base["show4"] = {"class_type": "ShowValue", "inputs": {"value": ["whole", 0]}}
    result = executor.run(base, settings)
    assert result.ok, result.error
    out = {k: result.outputs[k][0].samples for k in ("plain", "whole", "first", "rest", "cut")}
    assert torch.equal(out["plain"], out["whole"])
    assert torch.allclose(out["rest"], out["whole"], atol=1e-5)
    # without leftover noise the cut walk ends on its clean estimate, not on the noisy latent
    assert (out["first"] - out["cut"]).abs().max() > 1e-2
