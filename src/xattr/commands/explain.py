"""``xattr explain IMAGE "QUESTION"``: overlays, saved explanations and report.html from one capture."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .model_spec import DEFAULT_MODEL, resolve

DEFAULT_METHODS = ("glimpse", "tmme", "rollout", "raw_attention")
EXTRAS = ("return_token_maps", "return_layer_maps")  # asked of every method that has them


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``xattr explain``."""
    p = sub.add_parser(
        "explain",
        help="explain a model's answer about an image: overlays, saved maps, report.html",
        description=__doc__,
    )
    p.add_argument("image", help="image file (PNG, JPEG, ...)")
    p.add_argument("question", help="the question to ask about it")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="a conf/model name (e.g. qwen2_5_vl_7b), a local checkpoint directory, or "
        f"FAMILY:PATH (a hub id or a directory); default {DEFAULT_MODEL} (the shipped toy)",
    )
    p.add_argument(
        "--method",
        nargs="+",
        default=list(DEFAULT_METHODS),
        help=f"one or several methods, all from one capture (default: {' '.join(DEFAULT_METHODS)})",
    )
    p.add_argument("--answer", help="teacher-force this answer (default: the model generates one)")
    p.add_argument("--out", help="output folder (default: explanations/<image stem>)")
    p.add_argument("--device", help="override the model config's device (cpu, cuda, cuda:1)")
    p.add_argument("--dtype", help="override the model config's dtype (float32, bfloat16)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The command's body: validate, load, explain, write; exit code 2 on a bad input."""
    try:
        result = explain_to_folder(
            args.image,
            args.question,
            model=args.model,
            methods=args.method,
            answer=args.answer,
            out=args.out,
            device=args.device,
            dtype=args.dtype,
        )
    except (OSError, ValueError, KeyError) as err:  # OSError: files, the hub
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"xattr explain: {message}", file=sys.stderr)
        return 2
    print(summary_text(result))
    return 0


def explain_to_folder(
    image: str | Path,
    question: str,
    model: str = DEFAULT_MODEL,
    methods: Sequence[str] = DEFAULT_METHODS,
    answer: str | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> dict[str, Any]:
    """Explain once with every method and write ``<out>/{<method>.png, <method>/, report.html}``.

    Inputs are checked before the model loads: unknown methods, then the image, then the model.
    """
    from .. import explain
    from .. import methods as registry
    from ..images import load_image
    from ..models import load
    from ..report import write_report

    chosen = method_specs(methods, registry.available())
    picture = load_image(image)
    kwargs = resolve(model, device=device, dtype=dtype)
    try:
        adapter = load(kwargs.pop("family", None), kwargs.pop("path"), **kwargs)
    except OSError as err:  # e.g. a hub id that is not cached and cannot be downloaded
        if isinstance(err, FileNotFoundError):
            raise
        raise OSError(f"cannot load model {model!r}: {err}") from err
    explanations = explain(adapter, picture, question, method=chosen, answer=answer)
    folder = Path(out) if out is not None else Path("explanations") / Path(image).stem
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {"overlays": [], "saved": []}
    for name, expl in explanations.items():
        target = folder / f"{name}.png"
        expl.overlay(picture).save(target)
        files["overlays"].append(target)
        files["saved"].append(expl.save(folder / name))
    report = write_report(folder / "report.html", explanations, picture, question, model=model)
    first = next(iter(explanations.values()))
    return {
        "answer": first.meta.get("answer", ""),
        "answer_source": first.meta.get("answer_source", ""),
        "model": model,
        "folder": folder,
        "report": report,
        **files,
    }


def method_specs(names: Sequence[str], known: Sequence[str]) -> dict[str, dict[str, bool]]:
    """``{method: {return_token_maps: True, ...}}`` for the extras each method declares."""
    from ..methods import METHODS

    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    specs = {}
    for name in dict.fromkeys(names):
        fields = {f.name for f in METHODS.get_class(name).hparam_fields()}
        specs[name] = {k: True for k in EXTRAS if k in fields}
    return specs


def summary_text(result: dict[str, Any]) -> str:
    """What the command prints: the answer, then where each file is."""
    lines = [
        f"answer ({result['answer_source']}, {result['model']}): {result['answer']}",
        f"report:   {result['report']}",
        "overlays: " + ", ".join(str(p) for p in result["overlays"]),
        "saved:    " + ", ".join(f"{p}/" for p in result["saved"]) + "  (xattr.Explanation.load)",
    ]
    return "\n".join(lines)
