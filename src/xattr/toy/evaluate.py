"""Does a toy LVLM ground its answer in the queried object? Accuracy clean and with objects blurred out.

``grounding_report(model)`` answers held-out synthetic questions ("What color is the
circle?", the default benchmark: 112 px, 3 objects) three ways:

* ``accuracy`` -- the clean image;
* ``queried_blurred`` -- the queried object blurred out: should fall to chance
  (1 / number of colours), since the answer is nowhere else in the image;
* ``other_blurred`` -- another object (seeded choice) blurred out instead: should stay high;
* ``relational`` -- accuracy on each relational question ("What color is the shape left of
  the circle?", "What shape is next to the red one?") and on counting ("How many circles
  are there?"), clean images.

"Blurred out" has two modes: ``"fill"`` paints the object's bounding box with the background
colour (the object is gone), ``"blur"`` pastes a strongly Gaussian-blurred copy of the image
(xattr.images.blur_image, radius = image side / 10) over the object's bounding box grown by a
few pixels (a faint coloured smudge is left, its shape is gone). Answers are greedy
``generate`` through the model adapters' prompt, batched, compared to the expected word.

CLI: ``python -m xattr.toy.evaluate qwen2_5_vl --n 500`` (a family name means the shipped
checkpoint; a directory works too).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from xattr.data.synthetic import PALETTE, generate_synthetic
from xattr.images import blur_image

# Held-out questions: training streams use seeds >= xattr.toy.task.TRAIN_SEED_BASE.
HELDOUT_SEED = 2025
MODES = ("fill", "blur")
BLUR_GROW = 3  # px added around the bounding box in "blur" mode


def _load(model: Any, family: str | None = None) -> Any:
    """An xattr model adapter from an adapter, a family name (shipped checkpoint) or a directory."""
    if hasattr(model, "model") and hasattr(model, "processor") and hasattr(model, "prompt_text"):
        return model
    from transformers import AutoConfig

    import xattr.models as models
    from xattr.toy import checkpoint

    path = Path(model)
    if not path.exists() and str(model) in {"qwen2_5_vl", "qwen2_vl", "llava"}:
        path = checkpoint(str(model))
    family = family or AutoConfig.from_pretrained(path).model_type
    return models.load(family, path)


def remove_object(image: Image.Image, obj: dict[str, Any], background: Sequence[int], mode: str = "fill") -> Image.Image:  # fmt: skip
    """The image with one object (a synthetic sample's meta entry) blurred out."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    x0, y0, x1, y1 = obj["bbox"]  # exclusive ends
    arr = np.array(image.convert("RGB"))
    if mode == "fill":
        arr[y0:y1, x0:x1] = np.asarray(background, dtype=np.uint8)
        return Image.fromarray(arr)
    g = BLUR_GROW
    h, w = arr.shape[:2]
    ys, xs = slice(max(0, y0 - g), min(h, y1 + g)), slice(max(0, x0 - g), min(w, x1 + g))
    blurred = np.asarray(blur_image(image.convert("RGB")))
    arr[ys, xs] = blurred[ys, xs]
    return Image.fromarray(arr)


@torch.no_grad()
def answer_batch(adapter: Any, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 4) -> list[str]:  # fmt: skip
    """Greedy answers (special tokens and end-of-turn stripped, lower case) for a batch."""
    texts = [adapter.prompt_text(q) for q in questions]
    inputs = adapter.processor(images=list(images), text=texts, return_tensors="pt", padding=True)
    inputs = {k: v.to(adapter.device) for k, v in inputs.items()}
    model = adapter.model
    was = model.training
    model.eval()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    model.train(was)
    new = out[:, inputs["input_ids"].shape[1] :].tolist()
    stops = adapter.stop_ids() if hasattr(adapter, "stop_ids") else {adapter.tokenizer.eos_token_id}
    answers = []
    for row in new:
        keep = []
        for tok in row:
            if tok in stops:
                break
            keep.append(tok)
        answers.append(adapter.tokenizer.decode(keep, skip_special_tokens=True).strip().lower())
    return answers


def grounding_report(
    model: Any,
    n: int = 200,
    seed: int = HELDOUT_SEED,
    *,
    family: str | None = None,
    modes: Sequence[str] = MODES,
    batch_size: int = 50,
    n_objects: int = 3,
    image_size: int = 112,
    relational: bool = True,
) -> dict[str, Any]:
    """Held-out answer accuracy, and with the queried / another object blurred out (per mode).

    ``model`` is a model adapter, a checkpoint directory or a shipped family name. Returns
    ``{"n", "seed", "chance", "accuracy", "<mode>": {"queried_blurred", "other_blurred"}, ...}``
    plus the flat keys ``queried_blurred`` / ``other_blurred`` of the first mode, and with
    ``relational`` the accuracy on each relational and counting question kind
    (`relational_accuracy`).
    """
    adapter = _load(model, family)
    samples = generate_synthetic(n, seed, image_size=image_size, n_objects=n_objects)
    rng = np.random.default_rng([seed, 1])
    others = []
    for s in samples:
        idx = [i for i in range(len(s.meta["objects"])) if i != s.meta["queried"]]
        others.append(int(idx[rng.integers(len(idx))]) if idx else None)

    conditions: dict[str, list[Image.Image]] = {"clean": [s.load_image() for s in samples]}
    for mode in modes:
        conditions[f"{mode}/queried"] = [
            remove_object(s.image, s.meta["objects"][s.meta["queried"]], s.meta["background"], mode)
            for s in samples
        ]
        if n_objects > 1:
            conditions[f"{mode}/other"] = [
                remove_object(s.image, s.meta["objects"][o], s.meta["background"], mode)
                for s, o in zip(samples, others)
            ]
    questions = [s.question for s in samples]
    truth = [s.answer.lower() for s in samples]
    results: dict[str, float] = {}
    predictions: dict[str, list[str]] = {}
    for name, images in conditions.items():
        preds: list[str] = []
        for i in range(0, n, batch_size):
            preds += answer_batch(
                adapter, images[i : i + batch_size], questions[i : i + batch_size]
            )
        predictions[name] = preds
        results[name] = float(np.mean([p == t for p, t in zip(preds, truth)]))

    colors = sorted({o["color"] for s in samples for o in s.meta["objects"]} | set(PALETTE))
    report: dict[str, Any] = {
        "n": n,
        "seed": seed,
        "n_objects": n_objects,
        "chance": 1.0 / len(colors),
        "accuracy": results["clean"],
    }
    for mode in modes:
        report[mode] = {
            "queried_blurred": results[f"{mode}/queried"],
            "other_blurred": results.get(f"{mode}/other", float("nan")),
        }
    report["queried_blurred"] = report[modes[0]]["queried_blurred"]
    report["other_blurred"] = report[modes[0]]["other_blurred"]
    # How the answers spread over the colours when the queried object is gone.
    report["queried_blurred_answers"] = {
        mode: dict(zip(*np.unique(predictions[f"{mode}/queried"], return_counts=True)))
        for mode in modes
    }
    report["queried_blurred_answers"] = {
        m: {str(k): int(v) for k, v in d.items()}
        for m, d in report["queried_blurred_answers"].items()
    }
    if relational:
        report["relational"] = relational_accuracy(adapter, n, seed, batch_size=batch_size)
    return report


def relational_accuracy(adapter: Any, n: int, seed: int, batch_size: int = 50) -> dict[str, Any]:
    """Greedy answers to ``n`` held-out questions of each composite kind (the relations and
    counting, `synthetic_relations.COMPOSITE`), clean images.

    Returns ``{kind: accuracy, ..., "chance": {kind: ...}}``; chance is one over the answer
    vocabulary (`xattr.toy.task.KINDS`: colours for "left_color", shapes for "next_shape",
    numbers for "count").
    """
    from xattr.data.synthetic_relations import COMPOSITE, generate_relational
    from xattr.toy.task import KINDS, VOCABULARIES

    out: dict[str, Any] = {"chance": {}}
    for kind in COMPOSITE:
        samples = generate_relational(n, seed, kinds=(kind,))
        preds: list[str] = []
        for i in range(0, n, batch_size):
            chunk = samples[i : i + batch_size]
            preds += answer_batch(adapter, [s.image for s in chunk], [s.question for s in chunk])
        out[kind] = float(np.mean([p == s.answer.lower() for p, s in zip(preds, samples)]))
        out["chance"][kind] = 1.0 / len(VOCABULARIES[KINDS[kind].answer])
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Grounding report of a toy LVLM checkpoint.")
    ap.add_argument("model", help="checkpoint directory or shipped family name (qwen2_5_vl, llava)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=HELDOUT_SEED)
    ap.add_argument("--family", default=None)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--batch-size", type=int, default=50)
    args = ap.parse_args(argv)
    report = grounding_report(
        args.model, args.n, args.seed, family=args.family, modes=tuple(args.modes.split(",")),
        batch_size=args.batch_size,
    )  # fmt: skip
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
