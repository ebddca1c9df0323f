"""Where the toy models ground, layer by layer, and where each method's peak lies: docs/toy.md's numbers.

Per language-model layer ``k`` and per question group (today's "What color is the circle?",
the relational ones and counting), on the default run's held-out samples:

* raw attention restricted to layer ``k`` (the answer row, heads averaged: the
  ``raw_attention`` method's layer maps) -- NSS on the cells of the object the answer is
  about (on counting questions: every counted object), its share of the row's visual
  attention (on counting questions also per counted object), and the mean share on each
  *other* object (on relational questions the anchor's share too);
* GLIMPSE restricted to layer ``k`` (``layers=[k]``, its documented defaults otherwise) --
  NSS, so the gradient-weighted map is read at the same depth; and, for the first answer
  token, the share of ``A * G+`` (attention times its positive gradient, heads summed) on
  the answer's object and the fraction of positive gradient entries there and over all
  visual cells;
* where each method's peak cell lies (the answer's object, another object, background);
* with ``--run DIR`` (a finished default run), each method's mean NSS, pointing game and
  answer accuracy split by question kind (and the median deletion AUC: its mean is
  dominated by the few answers whose likelihood rises many-fold as cells are removed).

Cells belong to an object when it covers at least 30% of them (`xattr.toy.layer_profile`).
The profile is plotted to ``docs/toy_profile.png`` (one panel per model, the middle half
of the layers shaded).

    python docs/toy_diagnostics.py [--n 200] [--family qwen2_5_vl llava] [--run DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

import xattr
from xattr.data.cached import synthetic_dataset
from xattr.data.synthetic import object_mask
from xattr.metrics._resize import resize_area
from xattr.toy.layer_profile import object_cells

HERE = Path(__file__).resolve().parent
DATA = OmegaConf.load(HERE.parent / "conf" / "data" / "synthetic.yaml").dataset
ROOT = f"data/synthetic_val_seed{DATA.seed}"  # where `python train_free_eval.py` writes them
PEAK_METHODS = ("glimpse", "tmme", "rollout", "raw_attention", "gradcam")
PLOT = HERE / "toy_profile.png"
# What `profile` records per sample and layer, per question group.
PROFILE_KEYS = ("nss", "share", "share_each", "share_other", "share_anchor", "glimpse_nss",
                "share_AxG+", "positive_grad_object", "positive_grad_visual")  # fmt: skip
GROUP_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")  # a colour per question group


def default_run_data() -> Any:
    """The default run's synthetic samples (conf/data/synthetic.yaml), read from ``ROOT``."""
    params = OmegaConf.to_container(DATA)
    return synthetic_dataset(
        ROOT, **{k: v for k, v in params.items() if k not in ("_target_", "root")}
    )


def group_of(kind: str) -> str:
    """The question group a sample's kind belongs to: "color", "relational" or "count"."""
    return kind if kind in ("color", "count") else "relational"


def answer_objects(meta: dict) -> list[int]:
    """The objects the answer is about: the counted ones, or the one queried."""
    return list(meta.get("counted", [meta["queried"]]))


def cells(meta: dict, index: int, grid: tuple[int, int]) -> np.ndarray:
    """Cells of object ``index`` (`xattr.toy.layer_profile.object_cells`): [h*w] bool."""
    cover = resize_area(object_mask(meta, index).astype(np.float64), grid).flatten()
    return object_cells(torch.from_numpy(cover)[None, None])[0, 0].numpy()


def nss(weights: np.ndarray, on: np.ndarray) -> float:
    """Mean z-score of a map on a set of cells (0 for a constant map)."""
    std = weights.std()
    return float(((weights - weights.mean()) / std)[on].mean()) if std > 0 else 0.0


def profile(family: str, n: int) -> dict[str, dict[str, np.ndarray]]:
    """Per question group (`group_of`): per-layer arrays [n_samples, L]; plus peaks."""
    torch.set_num_threads(1)
    data = default_run_data()
    adapter = xattr.models.load(family, xattr.toy.checkpoint(family))
    raw = xattr.methods.get("raw_attention", return_layer_maps=True)
    peak_methods = {name: xattr.methods.get(name) for name in PEAK_METHODS}
    n_layers = adapter.model.config.get_text_config().num_hidden_layers
    glimpse_at = [xattr.methods.get("glimpse", layers=[k]) for k in range(n_layers)]
    out: dict[str, dict[str, list]] = {}
    peaks = {
        name: {"answer's object": 0, "other object": 0, "background": 0} for name in PEAK_METHODS
    }
    for i in range(min(n, len(data))):
        sample = data[i]
        meta = sample.meta
        group = group_of(meta.get("question_kind", "color"))
        row = out.setdefault(group, {k: [] for k in PROFILE_KEYS})
        trace = adapter.trace(sample.load_image(), sample.question, None, gradients=True)
        grid = trace.grid
        objects = [cells(meta, k, grid) for k in range(len(meta["objects"]))]
        targets = answer_objects(meta)
        on = np.any([objects[k] for k in targets], axis=0)
        layer_maps = raw.explain(trace).layer_maps.float().flatten(1).numpy()  # [L, h*w]
        shares = layer_maps / layer_maps.sum(1, keepdims=True)
        row["nss"].append([nss(m, on) for m in layer_maps])
        row["share"].append(shares[:, on].sum(1))
        # per answer object: set apart from ``share`` on counting questions only
        row["share_each"].append(np.mean([shares[:, objects[k]].sum(1) for k in targets], axis=0)
                                 if "counted" in meta else np.full(len(shares), np.nan))  # fmt: skip
        others = [objects[k] for k in range(len(objects)) if k not in targets]
        row["share_other"].append(np.mean([shares[:, o].sum(1) for o in others], axis=0)
                                  if others else np.full(len(shares), np.nan))  # fmt: skip
        anchor = meta.get("anchor")
        row["share_anchor"].append(shares[:, objects[anchor]].sum(1) if anchor is not None
                                   else np.full(len(shares), np.nan))  # fmt: skip
        glimpse = [method.explain(trace).visual.float().flatten().numpy() for method in glimpse_at]
        row["glimpse_nss"].append([nss(m, on) for m in glimpse])
        vis, p = trace.visual_index, int(trace.predicting_positions[0])
        grads = trace.token_gradients(0)  # [L, H, N, N], first answer token
        weighted, positive, positive_all = [], [], []
        for layer in range(trace.num_layers):
            attn = trace.attentions[layer][:, p, vis].float()  # [H, |V|]
            grad = grads[layer][:, p, vis].float()
            mass = (attn * grad.clamp_min(0)).sum(0).numpy()  # [|V|]
            weighted.append(mass[on].sum() / max(mass.sum(), 1e-12))
            positive.append(float((grad[:, on] > 0).float().mean()))
            positive_all.append(float((grad > 0).float().mean()))
        row["share_AxG+"].append(weighted)
        row["positive_grad_object"].append(positive)
        row["positive_grad_visual"].append(positive_all)
        for name, method in peak_methods.items():
            visual = method.explain(trace).visual.float().flatten().numpy()
            if not visual.any():
                continue  # an all-zero map has no peak
            j = int(visual.argmax())
            where = [k for k, o in enumerate(objects) if o[j]]
            key = (
                "background"
                if not where
                else "answer's object"
                if set(targets) & set(where)
                else "other object"
            )
            peaks[name][key] += 1
    result = {g: {k: np.asarray(v, dtype=float) for k, v in r.items()} for g, r in out.items()}
    result["peaks"] = peaks  # type: ignore[assignment]
    return result


def report(family: str, result: dict) -> None:
    """Print the per-layer means and the peak counts."""
    print(f"== {family}")
    for group, rows in result.items():
        if group == "peaks":
            continue
        print(f"{group} ({len(rows['nss'])} samples), per layer 0..L-1:")
        for key, value in rows.items():
            if np.isnan(value).all():
                continue  # (no anchor on today's questions)
            mean = np.nanmean(value, axis=0)
            print(f"  {key:13s}", " ".join(f"{v:5.2f}" for v in mean))
    print("where each method's peak cell lies:")
    for name, count in result["peaks"].items():
        total = sum(count.values())
        print(
            f"  {name:14s}",
            {k: round(v / max(total, 1), 2) for k, v in count.items()},
            f"n={total}",
        )


def plot(results: dict[str, dict], path: Path) -> None:
    """One panel per model: NSS per layer (raw attention per question group, GLIMPSE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.6 * len(results), 4.4), squeeze=False)
    for ax, (family, result) in zip(axes[0], results.items()):
        n_layers = next(iter(v for k, v in result.items() if k != "peaks"))["nss"].shape[1]
        ax.axvspan(n_layers / 4 - 0.5, 3 * n_layers / 4 - 0.5, color="0.92", label="middle half")
        for color, (group, rows) in zip(GROUP_COLORS, result.items()):
            if group == "peaks":
                continue
            ax.plot(np.nanmean(rows["nss"], 0), marker="o", color=color,
                    label=f"raw attention, {group}")  # fmt: skip
            ax.plot(np.nanmean(rows["glimpse_nss"], 0), marker="x", ls="--", color=color,
                    label=f"GLIMPSE at layer k, {group}")  # fmt: skip
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_title(f"{family} toy: NSS of layer k alone")
        ax.set_xlabel("language-model layer k")
        ax.set_ylabel("NSS on the answer's object")
        ax.legend(fontsize=6.5, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(path)


def by_kind(run_dir: Path) -> None:
    """A finished run's rows, per method and question kind: mean NSS, pointing game, accuracy."""
    from xattr.pipeline.results import load_rows

    kinds = {s.sample_id: s.meta.get("question_kind", "color") for s in default_run_data()}
    table: dict[tuple[str, str], list[dict]] = {}
    for row in load_rows(run_dir):
        group = group_of(kinds[str(row["sample_id"])])
        table.setdefault((row["method"], group), []).append(row)
    print("method | questions | n | nss | pointing_game | correct | deletion_auc median")
    for (method, group), rows in table.items():
        mean = {
            k: np.nanmean([r.get(k, np.nan) for r in rows])
            for k in ("nss", "pointing_game", "correct")
        }
        deletion = np.nanmedian([r.get("deletion_auc", np.nan) for r in rows])
        print(
            f"{method} | {group} | {len(rows)} | {mean['nss']:.3f} | {mean['pointing_game']:.3f} | {mean['correct']:.3f} | {deletion:.3f}"
        )


def main() -> None:
    """Profile each model, print the tables, save the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--family", nargs="+", default=list(xattr.toy.SHIPPED))
    parser.add_argument("--plot", type=Path, default=PLOT)
    parser.add_argument(
        "--run", type=Path, help="a finished default run: its scores by question kind"
    )
    args = parser.parse_args()
    if args.run:
        by_kind(args.run)
    results = {}
    for family in args.family:
        results[family] = profile(family, args.n)
        report(family, results[family])
    plot(results, args.plot)


if __name__ == "__main__":
    main()
