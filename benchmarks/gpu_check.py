"""A prepared device check: the paper-shaped random Qwen2.5-VL on CUDA, bf16 and fp32, every method.

For each (N, T, dtype, attention implementation) it runs every method from one capture on the
GPU, compares the maps with the same sample's CPU fp32 maps (fp32: max relative error
<= 1e-4; bf16: Spearman >= 0.99 per map), and reports the peak CUDA memory and the time per
sample. Rows at N ~ 290 and ~ 1,300 (images of 448 and 1008 px), T = 8 and 32. Runs in a few
minutes on one GPU; prints a markdown table (paste it into the README) and exits non-zero
when a comparison fails.

    python benchmarks/gpu_check.py               # on a machine with a GPU
    python benchmarks/gpu_check.py --smoke       # tiny shapes, any device (checks the script)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import QUESTION  # benchmarks/common.py
from common import answer as make_answer
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on whatever device there is")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
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
