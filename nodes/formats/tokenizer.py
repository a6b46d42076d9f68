"""CLIP's BPE tokenizer, offline: the files built from the vocabulary a registry package ships.

Checkpoints carry no tokenizer. Every SD-family text tower (CLIP-L, OpenCLIP-H, OpenCLIP-bigG)
uses OpenAI CLIP's BPE vocabulary, which the `open_clip_torch` wheel on PyPI ships as
`open_clip/bpe_simple_vocab_16e6.txt.gz`. `python -m nodes.formats.tokenizer` (run by `make
setup`) takes that file from the pinned wheel (downloaded without its dependencies, never
installed) and writes a transformers CLIPTokenizer folder (`vocab.json`, `merges.txt`, configs)
into `nodes/formats/clip_tokenizer/`. Nothing is downloaded at run time.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

TOKENIZER_DIR = Path(__file__).resolve().parent / "clip_tokenizer"
WHEEL = "open_clip_torch==3.3.0"
VOCAB_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP uses the first 48894 merges of the file
MAX_LENGTH = 77
START, END = "<|startoftext|>", "<|endoftext|>"


class TokenizerMissing(RuntimeError):
    """CLIP's vocabulary has not been installed."""


def byte_characters() -> list[str]:
    """CLIP's printable stand-ins for the 256 byte values, in its vocabulary's order.

    The printable bytes stand for themselves and come first; the other 68 follow, mapped to
    the characters from U+0100 on.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    rest = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(rest))]


def write_tokenizer(bpe_text: str, folder: Path) -> Path:
    """Write a CLIPTokenizer folder from the text of bpe_simple_vocab_16e6.txt."""
    merges = bpe_text.split("\n")[1 : MERGES + 1]
    letters = byte_characters()
    vocab = [*letters, *(c + "</w>" for c in letters), *("".join(m.split()) for m in merges)]
    vocab += [START, END]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": START,
        "eos_token": END,
        "unk_token": END,
        "pad_token": END,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


def install(folder: Path = TOKENIZER_DIR, wheel: Path | None = None) -> Path:
    """Build the tokenizer folder from the open_clip_torch wheel (downloaded when not given)."""
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                 "--disable-pip-version-check", WHEEL, "-d", tmp],
                check=True,
            )  # fmt: skip
            wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            text = gzip.decompress(z.read(VOCAB_MEMBER)).decode("utf-8")
        return write_tokenizer(text, folder)


@functools.lru_cache(maxsize=1)
def clip_tokenizer() -> Any:
    """The CLIP tokenizer every SD-family text tower uses (loaded once)."""
    from transformers import CLIPTokenizer

    if not (TOKENIZER_DIR / "vocab.json").is_file():
        raise TokenizerMissing(
            f"CLIP's tokenizer is not installed in {TOKENIZER_DIR}: run `make setup` "
            "(or `python -m nodes.formats.tokenizer`) once, with access to PyPI"
        )
    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a local open_clip_torch wheel")
    parser.add_argument("--out", type=Path, default=TOKENIZER_DIR)
    parser.add_argument("--if-missing", action="store_true", help="do nothing when installed")
    args = parser.parse_args(argv)
    if args.if_missing and (args.out / "vocab.json").is_file():
        return 0
    print(f"CLIP tokenizer written to {install(args.out, args.wheel)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
