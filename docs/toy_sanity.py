"""The cascading model-randomisation check on the shipped toy, for every built-in method (docs/toy.md).

For held-out default-run samples, the top ``k`` decoder layers of the language model are
re-initialised (cascading from the output down, `xattr.metrics.parameter_randomisation`),
the model's own answer is teacher-forced through the randomised model and each method
explains it again. Printed per method and step: the mean Spearman correlation between the
original and the randomised map (lower is better: a map that stays the same after the
layers that produced the answer were destroyed does not depend on them), and the mean
answer log-probability (the model did change). Every method runs with its documented
defaults (iGOS++ as ``igos_fast`` on fewer samples: it optimises a mask per step).

    python docs/toy_sanity.py [--n 20] [--family qwen2_5_vl]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from toy_diagnostics import default_run_data  # docs/toy_diagnostics.py, next to this script

import xattr
from xattr.metrics import parameter_randomisation

METHODS = ("glimpse", "tmme", "rollout", "raw_attention", "gradcam", "dexar", "igos_fast")
SLOW = {"igos_fast": 4}  # samples for methods that optimise per explanation


def steps_for(n_layers: int) -> list[int]:
    """Randomisation steps: the top 1, 2, 3 layers, then every quarter of the depth."""
    return sorted({1, 2, 3, *(round(n_layers * q) for q in (0.25, 0.5, 0.75, 1.0))})


def main() -> None:
    """Run the check and print one row per method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--family", default="qwen2_5_vl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = default_run_data()
    adapter = xattr.models.load(args.family, xattr.toy.checkpoint(args.family))
    n_layers = adapter.model.config.get_text_config().num_hidden_layers
    steps = steps_for(n_layers)
    print(f"{args.family}: {n_layers} decoder layers; randomised top k = {steps}")
    print("method | n | " + " | ".join(f"k={k}" for k in steps))
    logprob: dict[int, list[float]] = {0: [], **{k: [] for k in steps}}
    for name in METHODS:
        rho = []
        for i in range(min(SLOW.get(name, args.n), len(data))):
            sample = data[i]
            with warnings.catch_warnings():  # (undefined ranks count as NaN, skipped)
                warnings.simplefilter("ignore")
                rows = parameter_randomisation(
                    adapter, sample.load_image(), sample.question, name, layers=steps
                )
            rho.append([r["spearman"] for r in rows])
            if name == METHODS[0]:  # the model's answer log-probability per step, once
                logprob[0].append(rows[0]["original_answer_logprob"])
                for r in rows:
                    logprob[r["k"]].append(r["answer_logprob"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a step undefined on every sample
            mean = np.nanmean(np.asarray(rho, dtype=float), axis=0)
        print(f"{name} | {len(rho)} | " + " | ".join(f"{v:.2f}" for v in mean))
    print("answer log-prob (k = 0, " + ", ".join(map(str, steps)) + "): "
          + " ".join(f"{np.mean(v):.2f}" for v in logprob.values()))  # fmt: skip


if __name__ == "__main__":
    main()
