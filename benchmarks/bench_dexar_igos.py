"""Cost of DEX-AR and LVLM iGOS++/iGOS+ vs GLIMPSE per sample: passes through the model and time.

Each method runs as ``xattr.explain`` would run it alone: its own capture (with the gradients
and hidden states it declares) plus its attribution, on the same model and synthetic samples
(teacher-forced reference answers). Forward passes are counted by a hook on the model (one
pass = one image through it, whatever the batching); backward passes are the methods' own:
GLIMPSE one full-depth VJP per answer token, DEX-AR one single-layer VJP per (layer, token),
iGOS one backward per blended image. Prints a table and the ratios to GLIMPSE.

Model: the trained toy checkpoint (``xattr.toy.checkpoint``) when it exists, else a random
model of the same architecture (``xattr.toy.recipe.FAMILY_SIZES``).
Run: ``python benchmarks/bench_dexar_igos.py [--n 2 --family qwen2_5_vl --igos-iterations 15]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

import xattr
from xattr.data.synthetic import generate_synthetic


def load_adapter(family: str, workdir: Path) -> tuple[Any, str]:
    """The toy checkpoint if it exists, else a random model of the toy's architecture."""
    try:
        from xattr.toy import checkpoint

        path = Path(checkpoint(family))
        if (path / "config.json").exists():
            return xattr.models.load(family, path), f"toy checkpoint {path}"
    except (ImportError, FileNotFoundError, KeyError, ValueError):
        pass
    from xattr.toy.build import build_tiny_model
    from xattr.toy.recipe import FAMILY_SIZES

    path = build_tiny_model(family, workdir / family, seed=0, **FAMILY_SIZES[family])
    return xattr.models.load(family, path), "random model with the toy's architecture"


class ForwardCounter:
    """Counts images through ``model`` (batch size of each forward call)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.images = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.images += int(ids.shape[0]) if ids is not None else 1


def run(adapter: Any, samples: list, name: str, hparams: dict[str, Any]) -> dict[str, float]:
    """Mean forward passes, backward passes, wall and CPU seconds per sample of one method."""
    counter = ForwardCounter(adapter.model)
    backward, seconds, cpu = 0, 0.0, 0.0
    try:
        for sample in samples:
            start, start_cpu = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expl = xattr.explain(
                    adapter,
                    sample.image,
                    sample.question,
                    method=name,
                    answer=sample.answer,
                    **hparams,
                )
            seconds += time.perf_counter() - start
            cpu += time.process_time() - start_cpu
            # GLIMPSE reports no count: one full-depth VJP per answer token
            backward += int(expl.meta.get("backward_passes", len(expl.answer_tokens)))
    finally:
        counter.handle.remove()
    n = len(samples)
    return {
        "forward": counter.images / n,
        "backward": backward / n,
        "seconds": seconds / n,
        "cpu": cpu / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen2_5_vl", choices=xattr.models.available())
    parser.add_argument("--n", type=int, default=2, help="samples")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--igos-iterations", type=int, default=15)
    parser.add_argument("--igos-steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1)")
    parser.add_argument(
        "--sentence", action="store_true", help='answer "the <shape> is <colour> ." (5 tokens)'
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        adapter, source = load_adapter(args.family, Path(tmp))
    samples = generate_synthetic(args.n, args.seed)
    if args.sentence:
        for s in samples:
            shape = s.meta["objects"][s.meta["queried"]]["shape"]
            s.answer = f"the {shape} is {s.answer} ."
    igos = {"iterations": args.igos_iterations, "ig_steps": args.igos_steps}
    plan = [
        ("glimpse", "glimpse", {}),
        ("dexar", "dexar", {}),
        ("igos++", "igos", {**igos, "variant": "igos++"}),
        ("igos+", "igos", {**igos, "variant": "igos+"}),
    ]
    run(adapter, samples[:1], "glimpse", {})  # warm-up (allocator, lazy imports)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.family} ({source}); "
        f"{args.n} synthetic samples, answers like {samples[0].answer!r}; iGOS: {igos}"
    )
    results = {label: run(adapter, samples, name, hp) for label, name, hp in plan}
    base = results["glimpse"]
    print(
        f"{'method':<8} {'fwd/sample':>10} {'bwd/sample':>10} {'wall s':>8} {'CPU s':>8} "
        f"{'x wall':>7} {'x CPU':>7} {'x fwd':>7}"
    )
    for label, r in results.items():
        print(
            f"{label:<8} {r['forward']:10.1f} {r['backward']:10.1f} {r['seconds']:8.3f} {r['cpu']:8.3f} "
            f"{r['seconds'] / base['seconds']:7.1f} {r['cpu'] / base['cpu']:7.1f} "
            f"{r['forward'] / base['forward']:7.1f}"
        )
    print(
        "(x: ratio to GLIMPSE; CPU time is less sensitive than wall time to other load on the machine)"
    )


if __name__ == "__main__":
    main()
