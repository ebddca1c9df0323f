"""Why the methods rank as they do on the toy: the numbers quoted in the README's default-run section.

Per layer, how much of the answer position's visual attention (``A``) and of GLIMPSE's
gradient-weighted attention (``A * G+``) lands on the queried object, and how often the
gradient is positive there; then where each method's peak cell lies (queried object,
another object, background). Reads the default run's synthetic samples.

    python docs/toy_diagnostics.py [--n 200]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import xattr
from xattr.data.cached import synthetic_dataset
from xattr.data.synthetic import object_mask, read_synthetic_meta
from xattr.metrics._resize import resize_area

ROOT = "data/synthetic_val_seed12345"  # written by `python train_free_eval.py`
METHODS = ("glimpse", "tmme", "rollout", "raw_attention", "gradcam")


def cell_coverage(meta: dict, index: int, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each token-grid cell covered by object ``index``: [h, w] (exact area)."""
    return torch.from_numpy(resize_area(object_mask(meta, index).astype(np.float64), grid))


def main() -> None:
    """Print the per-layer object shares and the peak-location counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = synthetic_dataset(ROOT, n=200, seed=12345)
    side = read_synthetic_meta(ROOT)
    adapter = xattr.models.load("qwen2_5_vl", xattr.toy.checkpoint("qwen2_5_vl"))
    methods = {name: xattr.methods.get(name) for name in METHODS}

    shares = {k: [] for k in ("attention", "attention_x_positive_grad", "positive_grad_object")}
    shares["positive_grad_visual"] = []
    area = []
    peaks = {name: {"queried": 0, "other": 0, "background": 0} for name in METHODS}
    for i in range(args.n):
        sample = data[i]
        meta = side[sample.sample_id]
        trace = adapter.trace(sample.load_image(), sample.question, None, gradients=True)
        covers = [cell_coverage(meta, k, trace.grid) for k in range(len(meta["objects"]))]
        on_object = covers[meta["queried"]].flatten() > 0.3  # [|V|]
        area.append(on_object.float().mean().item())
        vis, p = trace.visual_index, int(trace.predicting_positions[0])
        grads = trace.token_gradients(0)  # [L, H, N, N], first answer token
        row = {k: [] for k in shares}
        for layer in range(trace.num_layers):
            attn = trace.attentions[layer][:, p, vis].float()  # [H, |V|]
            grad = grads[layer][:, p, vis].float()
            weighted = attn * grad.clamp_min(0)
            row["attention"].append((attn[:, on_object].sum() / attn.sum()).item())
            row["attention_x_positive_grad"].append(
                (weighted[:, on_object].sum() / weighted.sum().clamp_min(1e-12)).item()
            )
            row["positive_grad_object"].append((grad[:, on_object] > 0).float().mean().item())
            row["positive_grad_visual"].append((grad > 0).float().mean().item())
        for k in shares:
            shares[k].append(row[k])
        for name, method in methods.items():
            visual = method.explain(trace).visual.float()
            if not visual.any():
                continue  # an all-zero map has no peak
            r, c = divmod(int(visual.flatten().argmax()), trace.grid[1])
            cover = [float(m[r, c]) for m in covers]
            k = int(np.argmax(cover))
            where = "background" if cover[k] < 0.25 else "other"
            peaks[name]["queried" if where == "other" and k == meta["queried"] else where] += 1

    print(f"{args.n} samples; queried object covers {np.mean(area):.3f} of the cells")
    print("share on the queried object, per layer 0..L-1 (answer position's row):")
    for k, v in shares.items():
        print(f"  {k:28s}", np.round(np.nanmean(v, axis=0), 3))
    print("where each method's peak cell lies:")
    for name, count in peaks.items():
        total = sum(count.values())
        print(f"  {name:14s}", {k: round(v / total, 2) for k, v in count.items()}, f"n={total}")


if __name__ == "__main__":
    main()
