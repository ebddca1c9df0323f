"""A prepared device check: Qwen2.5-VL on CUDA, every method, in two modes.

Default: the paper-shaped random Qwen2.5-VL (Qwen2.5-VL-7B's attention shape, narrow width)
in bf16 and fp32. For each (N, T, dtype, attention implementation) it runs every method from
one capture on the GPU, compares the maps with the same sample's CPU fp32 maps (fp32: max
relative error <= 1e-4; bf16: Spearman >= 0.99 per map), and reports the peak CUDA memory and
the time per sample. Rows at N ~ 290 and ~ 1,300 (images of 448 and 1008 px), T = 8 and 32.
Runs in a few minutes on one GPU; prints a markdown table (paste it into the README) and exits
non-zero when a comparison fails.

``--full``: the real configurations of Qwen2.5-VL-7B-Instruct and -32B-Instruct at full width
(the model cards' config.json, written below), random weights built directly on the GPU in
bf16 (no download, no CPU copy), wrapped in the ``qwen2_5_vl`` adapter with the tiny
word-level tokenizer and a processor that pins a 1008 px image to 36 x 36 = 1,296 visual
tokens (N = 1,373 with the prompt and T = 64). For each model, eager and SDPA, one sample:
every method and a reduced iGOS from one capture, and the floor of `common.floor` (one forward
+ T plain VJPs of the answer logits), each timed and its peak CUDA memory taken. A row that
runs out of memory says OOM. About 3-5 minutes on one H200 (estimated: not run yet).

    python benchmarks/gpu_check.py                  # on a machine with a GPU
    python benchmarks/gpu_check.py --smoke          # tiny shapes, any device (checks the script)
    python benchmarks/gpu_check.py --full           # real 7B and 32B sizes (32B: 62 GiB of weights)
    python benchmarks/gpu_check.py --full --smoke   # the same path, tiny shapes, any device
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import QUESTION  # benchmarks/common.py
from common import answer as make_answer
from common import floor as plain_floor
from PIL import Image
from scipy.stats import spearmanr

import xattr
from xattr.toy.build import build_tiny_model

METHODS = ["glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar"]
IGOS = {"igos": {"iterations": 2, "ig_steps": 2, "mask_size": 8, "token_policy": "all"}}


def build(root: Path, image: int, smoke: bool) -> Path:
    """The random model of the paper's attention shape (narrow width), saved once per image size."""
    out = root / f"qwen_{image}"
    if not out.exists():
        shape = dict(text_layers=28, text_heads=28, text_kv_heads=4, text_hidden=224)
        if smoke:
            shape = dict(text_layers=4, text_heads=4, text_kv_heads=2, text_hidden=64)
        build_tiny_model("qwen2_5_vl", out, image_size=image, vision_layers=1, vision_hidden=32,
                         vision_heads=2, **shape)  # fmt: skip
    return out


def explain(adapter, image: Image.Image, T: int) -> tuple[dict, float]:
    """Every method (and a reduced iGOS) from one capture; seconds for the whole sample."""
    answer = make_answer(T)
    if adapter.device.type == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = xattr.explain(adapter, image, QUESTION, method=[*METHODS], answer=answer)
        out.update(xattr.explain(adapter, image, QUESTION, method=IGOS, answer=answer))
    if adapter.device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - began


def compare(got: dict, ref: dict, dtype: str) -> tuple[bool, str]:
    """fp32: every map within 1e-4 of the CPU map (relative to its peak); bf16: Spearman >= 0.99."""
    worst, ok = [], True
    for name, expl in got.items():
        a = expl.visual.double().flatten().numpy()
        b = ref[name].visual.double().flatten().numpy()
        if dtype == "float32":
            err = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
            ok &= err <= 1e-4 or name == "igos"  # iGOS: noisy optimisation, order of ops differs
            worst.append(f"{name} {err:.1e}")
        else:
            rho = 1.0 if np.ptp(a) == 0 and np.ptp(b) == 0 else float(spearmanr(a, b).statistic)
            ok &= rho >= 0.99 or name == "igos"
            worst.append(f"{name} {rho:.3f}")
    return ok, ", ".join(worst)


# ------------------------------------------------------------------------------ --full
# Qwen2.5-VL-7B-Instruct's and -32B-Instruct's language models, from the model cards'
# config.json (Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen2.5-VL-32B-Instruct): head_dim 128 in both.
REAL_TEXT = {
    "7B": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "intermediate_size": 18944},
    "32B": {"hidden_size": 5120, "num_hidden_layers": 64, "num_attention_heads": 40,
            "num_key_value_heads": 8, "intermediate_size": 27648},
}  # fmt: skip
# What both config.json files share. M-RoPE splits head_dim / 2 = 64 frequencies 16:24:24;
# untied lm_head (tie_word_embeddings false), so the 152,064-word vocabulary costs two matrices.
REAL_SHARED = {
    "vocab_size": 152064, "rms_norm_eps": 1e-6, "max_position_embeddings": 128000,
    "use_sliding_window": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}  # fmt: skip
# The vision tower of both (out_hidden_size = the language model's width). The config.json
# files list hidden_size 1280 and leave the rest to the config class; these are the
# Qwen2_5_VLVisionConfig defaults of transformers 5 (checked in its configuration_qwen2_5_vl.py,
# whose own hidden_size default, 3584, is not the checkpoints' 1280). The Qwen2.5-VL report's
# table gives an MLP width of 3456; the 7B checkpoint's weights are 3420 wide, and the 32B one
# was not checked here (either way under 0.1 % of the weights).
REAL_VISION = {
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
    "hidden_act": "silu", "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
    "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
}  # fmt: skip
# --full --smoke: the same two models scaled down (head_dim 16, M-RoPE split 2:3:3).
SMOKE_TEXT = {
    "7B": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128},
    "32B": {"hidden_size": 80, "num_hidden_layers": 3, "num_attention_heads": 5,
            "num_key_value_heads": 1, "intermediate_size": 160},
}  # fmt: skip
SMOKE_SHARED = {
    "vocab_size": 512, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048,
    "use_sliding_window": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
}  # fmt: skip
SMOKE_VISION = {
    "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "hidden_act": "silu",
    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [1], "tokens_per_second": 2,
}  # fmt: skip
FULL_IMAGE, FULL_T = 1008, 64  # 1008 / 14 / 2 = 36: 1,296 visual tokens
SMOKE_IMAGE, SMOKE_T = 112, 8


def full_config(name: str, smoke: bool, tok):
    """The Qwen2_5_VLConfig of ``name`` (7B or 32B); token ids from the tiny tokenizer, which
    the processor writes (the real ids, 151652-151656, would lie outside its vocabulary)."""
    from transformers import Qwen2_5_VLConfig

    from xattr.toy.tiny.qwen2_vl import token_ids

    shapes, shared = (SMOKE_TEXT, SMOKE_SHARED) if smoke else (REAL_TEXT, REAL_SHARED)
    text = {**shapes[name], **shared}
    assert len(tok) <= text["vocab_size"], "the tokenizer's ids must fit the vocabulary"
    ids = tok.convert_tokens_to_ids
    text |= {"bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"),
             "pad_token_id": tok.pad_token_id}  # fmt: skip
    vision = {**(SMOKE_VISION if smoke else REAL_VISION), "out_hidden_size": text["hidden_size"]}
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **token_ids(tok)
    )


def random_model(config, device: str):
    """Random weights (transformers' init: normal, std 0.02) made on ``device`` in bf16."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16, attn_implementation="eager"
        )
    return model.eval()


def timed(fn, cuda: bool) -> tuple[float, float]:
    """Seconds of ``fn()`` and its peak CUDA memory in GB (NaN off CUDA)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - began, (
        torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan
    )


def full_row(adapter, image: Image.Image, T: int, cuda: bool) -> dict:
    """One sample: a short warm-up, then the floor and every method, each timed."""
    row: dict = {}
    answer = make_answer(T)
    answer_ids = adapter.encode_answer(answer)
    row["N"] = adapter.prepare(image, QUESTION).prompt_ids.numel() + answer_ids.numel()
    row["T"] = answer_ids.numel()
    try:
        warm = adapter.encode_answer(make_answer(2))  # kernels, cuBLAS, the allocator's pools
        plain_floor(adapter, image, QUESTION, warm)
        explain(adapter, image, 2)
        row["floor"], row["floor_peak"] = timed(
            lambda: plain_floor(adapter, image, QUESTION, answer_ids), cuda
        )
        maps: dict = {}
        row["time"], row["peak"] = timed(lambda: maps.update(explain(adapter, image, T)[0]), cuda)
        bad = [k for k, e in maps.items() if not torch.isfinite(e.visual.float()).all()]
        row["maps"] = f"{len(maps)} finite" if not bad else "not finite: " + ", ".join(bad)
    except torch.cuda.OutOfMemoryError:
        row["oom"] = True
    return row


def cell(row: dict, key: str, fmt: str) -> str:
    """A measured value, or OOM where the row ran out of memory before it."""
    if key not in row:
        return "OOM" if row.get("oom") else "-"
    value = row[key]
    return "n/a (no CUDA)" if isinstance(value, float) and math.isnan(value) else fmt.format(value)


def print_full_row(name: str, impl: str, weights: float | None, row: dict) -> None:
    """One row of the --full table, printed at once (OOM where a step ran out of memory)."""
    ratio = row["time"] / row["floor"] if "time" in row else None
    size = "OOM" if weights is None else f"{weights:.1f} GB"
    if weights is not None and weights < 1:  # the smoke shapes
        size = f"{weights * 1024:.1f} MB"
    cells = [
        f"Qwen2.5-VL-{name}", str(row.get("N", "-")), str(row.get("T", "-")), impl,
        size, cell(row, "peak", "{:.1f} GB"), cell(row, "floor_peak", "{:.1f} GB"),
        cell(row, "time", "{:.2f} s"), cell(row, "floor", "{:.2f} s"),
        f"{ratio:.2f}x" if ratio is not None else cell(row, "time", ""), row.get("maps", "-"),
    ]  # fmt: skip
    print("| " + " | ".join(cells) + " |", flush=True)


def full(models: list[str], smoke: bool, device: str) -> int:
    """Every model at its real size (or the smoke shapes), eager and SDPA, one sample each."""
    from xattr.models import ADAPTERS
    from xattr.toy.tiny.qwen2_vl import processor, tokenizer

    cuda, started = device == "cuda", time.perf_counter()
    size, T = (SMOKE_IMAGE, SMOKE_T) if smoke else (FULL_IMAGE, FULL_T)
    image = Image.fromarray(
        np.random.default_rng(size).integers(0, 255, (size, size, 3), dtype=np.uint8)
    )
    tok = tokenizer()
    proc = processor("qwen2_5_vl", tok, size, 14, 2)
    print(f"device: {torch.cuda.get_device_name() if cuda else device}; bf16, random weights, "
          f"{'smoke shapes' if smoke else 'full width'}", flush=True)  # fmt: skip
    print("| model | N | T | attention | weights | peak memory (weights + sample) | floor peak | "
          "time / sample | floor time | ratio | maps |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    for name in models:
        torch.manual_seed(0)
        model = None
        try:
            began = time.perf_counter()
            model = random_model(full_config(name, smoke, tok), device)
            weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
            print(f"<!-- {name}: built in {time.perf_counter() - began:.1f} s -->", flush=True)
        except torch.cuda.OutOfMemoryError:
            for impl in ("eager", "sdpa"):
                print_full_row(name, impl, None, {"oom": True})
        if model is not None:
            for impl in ("eager", "sdpa"):
                model.set_attn_implementation(impl)
                adapter = ADAPTERS.get_class("qwen2_5_vl")(model, proc)
                print_full_row(name, impl, weights, full_row(adapter, image, T, cuda))
                del adapter
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            left = torch.cuda.memory_allocated() / 2**30
            if left > 1:
                print(f"<!-- {left:.1f} GB still allocated after freeing {name} -->", flush=True)
    print(f"<!-- all rows in {time.perf_counter() - started:.0f} s -->", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device there is")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--full", action="store_true", help="the real 7B and 32B sizes, bf16")
    ap.add_argument("--models", default="7B,32B", help="with --full: which, comma-separated")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.full:
        models = args.models.split(",")
        if set(models) - set(REAL_TEXT):
            ap.error(f"--models takes a comma-separated list of {', '.join(REAL_TEXT)}")
        if args.device != "cuda" and not args.smoke:
            ap.error("--full builds 15 and 62 GiB of weights: it needs --device cuda (or --smoke)")
        return full(models, args.smoke, args.device)
    images = [448, 1008] if not args.smoke else [112, 224]
    lengths = [8, 32] if not args.smoke else [4, 8]
    failed = False
    print(f"device: {torch.cuda.get_device_name() if args.device == 'cuda' else args.device}")
    print("| N | T | dtype | attention | time / sample | peak CUDA memory | vs CPU fp32 maps |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in images:
            path = build(Path(tmp), size, args.smoke)
            rng = np.random.default_rng(size)
            image = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
            cpu = xattr.models.load(path, attn_implementation="eager")
            for T in lengths:
                reference = None
                if size == images[0] or lengths[0] == T:  # the CPU fp32 maps of this sample
                    reference, _ = explain(cpu, image, T)
                for dtype in ("float32", "bfloat16"):
                    for impl in ("eager", "sdpa"):
                        adapter = xattr.models.load(path, dtype=dtype, device=args.device,
                                                    attn_implementation=impl)  # fmt: skip
                        if args.device == "cuda":
                            torch.cuda.reset_peak_memory_stats()
                        got, seconds = explain(adapter, image, T)
                        peak = (
                            torch.cuda.max_memory_allocated() / 2**30
                            if args.device == "cuda"
                            else float("nan")
                        )
                        verdict = "not compared"
                        if reference is not None:
                            ok, detail = compare(got, reference, dtype)
                            failed |= not ok
                            verdict = ("ok: " if ok else "FAILED: ") + detail
                        n = adapter.prepare(image, QUESTION).prompt_ids.numel() + T
                        print(f"| {n} | {T} | {dtype} | {impl} | {seconds:.2f} s | {peak:.2f} GB | {verdict} |",
                              flush=True)  # fmt: skip
                        del adapter
                        if args.device == "cuda":
                            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
