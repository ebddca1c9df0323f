"""``xattr explain IMAGE [IMAGE ...] "QUESTION"``: overlays, saved explanations and report.html
from one capture (several images: one prompt that shows them all, in order)."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..video import Video
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
    p.add_argument(
        "image", nargs="*", help="image file(s) (PNG, JPEG, ...); several: one prompt shows all"
    )
    p.add_argument("question", help="the question to ask about it (them)")
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
    part = p.add_mutually_exclusive_group()
    part.add_argument(
        "--target",
        help='explain part of the answer: a phrase in it, "final" or "reasoning" (a thinking '
        "model's), or START:END answer tokens",
    )
    part.add_argument(
        "--sentences",
        action="store_true",
        help="one map per sentence of the answer, besides the whole",
    )
    p.add_argument(
        "--contrast",
        help="why the target and not this: an alternative word (with --target) or answer; "
        "methods that cannot explain a contrast are left out of the default list",
    )
    p.add_argument(
        "--out",
        help="output folder (default: explanations/<image stem>; several images: their stems "
        "joined by '+')",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="a method hyper-parameter, e.g. --set glimpse.tau_head=0.25 (repeatable; "
        "`xattr list --method NAME` lists them)",
    )
    p.add_argument("--max-new-tokens", type=int, help="longest generated answer (tokens)")
    p.add_argument(
        "--video",
        metavar="PATH",
        help="a video file instead of images (the families whose inputs say video)",
    )
    p.add_argument("--fps", type=float, help="with --video: sample the frames at this rate")
    p.add_argument("--num-frames", type=int, help="with --video: keep this many frames, evenly")
    p.add_argument("--attn", help="attention implementation: eager (default) or sdpa")
    p.add_argument("--device", help="override the model config's device (auto, cpu, cuda, cuda:1)")
    p.add_argument("--dtype", help="override the model config's dtype (float32, bfloat16)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The command's body: validate, load, explain, write; exit code 2 on a bad input."""
    from ..models import AnswerCutWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnswerCutWarning)  # the summary says it instead
            if bool(args.image) == bool(args.video):
                raise ValueError("give image file(s) or --video PATH (not both), then the question")
            if args.video:
                source: Any = Video(args.video, fps=args.fps, num_frames=args.num_frames)
            else:
                source = args.image[0] if len(args.image) == 1 else args.image
            result = explain_to_folder(
                source,
                args.question,
                model=args.model,
                methods=args.method,
                answer=args.answer,
                out=args.out,
                device=args.device,
                dtype=args.dtype,
                settings=args.set,
                max_new_tokens=args.max_new_tokens,
                attn=args.attn,
                target="sentences" if args.sentences else args.target,
                contrast=args.contrast,
            )
    except (OSError, ValueError, KeyError) as err:  # OSError: files, the hub
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"xattr explain: {message}", file=sys.stderr)
        return 2
    print(summary_text(result))
    return 0


def explain_to_folder(
    image: str | Path | Sequence[str | Path] | Video,
    question: str,
    model: str = DEFAULT_MODEL,
    methods: Sequence[str] = DEFAULT_METHODS,
    answer: str | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    settings: Sequence[str] = (),
    max_new_tokens: int | None = None,
    attn: str | None = None,
    target: str | None = None,
    contrast: str | None = None,
) -> dict[str, Any]:
    """Explain once with every method and write ``<out>/{<method>.png, <method>/, report.html}``.

    ``image`` may be a list: one prompt shows every image, and each method's overlays are
    ``<method>_image1.png``, ``<method>_image2.png``, ...; or a `Video`: overlays
    ``<method>_frame1.png``, ... per sampled frame. Inputs are checked before the model loads:
    methods and their settings, then the image(s) or frames, then the model, its device and dtype.
    """
    from .. import explain
    from .. import methods as registry
    from ..api import build_methods
    from ..images import load_images, prompt_images
    from ..models import load
    from ..report import write_report

    if contrast is not None and tuple(methods) == DEFAULT_METHODS:  # only those that can
        methods = [m for m in methods if registry.resolve(m)[0].contrastive]
    specs = method_specs(methods, [*registry.available(), *registry.variants()])
    for name, values in parse_settings(settings, specs).items():
        specs[name].update(values)
    chosen = build_methods(specs)  # hyper-parameter rules checked here
    video = image if isinstance(image, Video) else None
    if video is not None:
        paths = [Path(video.source)] if isinstance(video.source, (str, Path)) else [Path("video")]
        pictures = video.frames()  # names a missing or undecodable file
    else:
        paths = [Path(p) for p in (image if isinstance(image, (list, tuple)) else [image])]
        pictures = load_images(paths)  # names the first missing or unreadable file
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if attn not in (None, "eager", "sdpa"):
        raise ValueError(f"unknown --attn {attn!r}; expected eager or sdpa")
    kwargs = resolve(
        model, device=device, dtype=dtype, max_new_tokens=max_new_tokens, attn_implementation=attn
    )
    family, path = kwargs.pop("family", None), kwargs.pop("path")
    try:
        adapter = load(family, path, **kwargs)
    except OSError as err:  # e.g. a hub id that is not cached and cannot be downloaded
        if isinstance(err, FileNotFoundError):
            raise
        where = "" if str(path) == model else f" ({path})"
        raise OSError(f"cannot load model {model!r}{where}: {err}") from err
    shown = video if video is not None else prompt_images(pictures)
    explanations = explain(
        adapter, shown, question, method=chosen, answer=answer,
        target=token_range(target), contrast=contrast,
    )  # fmt: skip
    stem = "+".join(p.stem for p in paths)
    folder = Path(out) if out is not None else Path("explanations") / stem
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {"overlays": [], "saved": []}
    for name, expl in explanations.items():
        for k, picture in enumerate(pictures):
            overlay = folder / overlay_name(name, k, len(pictures), "frame" if video else "image")
            expl.overlay(picture, index=k).save(overlay)
            files["overlays"].append(overlay)
        files["saved"].append(expl.save(folder / name))
    report = write_report(
        folder / "report.html", explanations, prompt_images(pictures), question, model=model
    )
    first = next(iter(explanations.values()))
    shares = {n: e.shown()[1].tolist() for n, e in explanations.items()}
    return {
        "images": paths,
        "video": video is not None,
        "shares": shares if len(pictures) > 1 else {},
        "target": target,
        "contrast": first.meta.get("contrast"),
        "spans": [(s.text, s.relevance) for s in first.spans],
        "answer": first.meta.get("answer", ""),
        "answer_source": first.meta.get("answer_source", ""),
        "answer_cut": bool(first.meta.get("answer_cut")),
        "max_new_tokens": adapter.max_new_tokens,
        "model": model,
        "folder": folder,
        "report": report,
        **files,
    }


def overlay_name(method: str, image: int, num_images: int, kind: str = "image") -> str:
    """A method's overlay file: ``<method>.png``, or ``<method>_<kind><k+1>.png`` of several
    images (``kind`` "image") or a video's frames ("frame")."""
    return f"{method}.png" if num_images == 1 else f"{method}_{kind}{image + 1}.png"


def method_specs(names: Sequence[str], known: Sequence[str]) -> dict[str, dict[str, bool]]:
    """``{method: {return_token_maps: True, ...}}`` for the extras each method declares."""
    from ..methods import resolve as resolve_method

    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    specs = {}
    for name in dict.fromkeys(names):
        fields = {f.name for f in resolve_method(name)[0].hparam_fields()}
        specs[name] = {k: True for k in EXTRAS if k in fields}
    return specs


def parse_settings(
    settings: Sequence[str], specs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """``["glimpse.tau_head=0.25"]`` -> ``{"glimpse": {"tau_head": 0.25}}`` (YAML values),
    each naming a chosen method and one of its hyper-parameters."""
    from ..methods import resolve as resolve_method
    from ..registry import did_you_mean

    out: dict[str, dict[str, Any]] = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        name, dot, field = key.partition(".")
        if not sep or not dot or not field:
            raise ValueError(
                f"--set {setting!r}: expected METHOD.KEY=VALUE (glimpse.tau_head=0.25)"
            )
        if name not in specs:
            raise ValueError(f"--set {setting!r}: {name!r} is not among --method {' '.join(specs)}")
        fields = [f.name for f in resolve_method(name)[0].hparam_fields()]
        if field not in fields:
            hint = did_you_mean(field, fields)
            raise ValueError(f"--set {setting!r}: {name} has no hyper-parameter {field!r}{hint}")
        out.setdefault(name, {})[field] = setting_value(text)
    return out


def setting_value(text: str) -> Any:
    """A ``--set`` value as Hydra would read it: YAML, with ``1e-3`` a number."""
    import yaml

    value = yaml.safe_load(text) if text else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def token_range(target: str | None) -> str | tuple[int, int] | None:
    """``START:END`` as a token range; any other target as it is."""
    if target is not None and re.fullmatch(r"\d+:\d+", target):
        start, end = target.split(":")
        return int(start), int(end)
    return target


def summary_text(result: dict[str, Any]) -> str:
    """What the command prints: the answer (several images: each one's share of every
    method's relevance), then where each file is."""
    lines = [
        f"answer ({result['answer_source']}, {result['model']}): {result['answer']}",
        f"report:   {result['report']}",
        "overlays: " + ", ".join(str(p) for p in result["overlays"]),
        "saved:    " + ", ".join(f"{p}/" for p in result["saved"]) + "  (xattr.Explanation.load)",
    ]
    extra = []
    if result.get("contrast"):
        c = result["contrast"]
        extra.append(
            f"contrast: {c['answer_token'].strip()!r} and not {c['alternative_token'].strip()!r} "
            f"(logit difference {c['logit_difference']:.4g})"
        )
    if result.get("target") is not None:
        extra.append(f"target:   {result['target']}")
        extra += [f"  span {text.strip()!r}: relevance {rel:.4g}" for text, rel in result["spans"]]
    if result.get("shares"):  # several images or frames: each one's share of the relevance
        kind = "frame" if result.get("video") else "image"
        if result.get("video"):
            extra.append(f"video:    {result['images'][0]}")
        else:
            extra += [f"image {k + 1}:  {path}" for k, path in enumerate(result["images"])]
        extra += [
            f"shares:   {method}: "
            + ", ".join(f"{kind} {k + 1} {_percent(v)}" for k, v in enumerate(shares))
            for method, shares in result["shares"].items()
        ]
    lines[1:1] = extra
    if result.get("answer_cut"):
        lines.insert(
            1,
            f"note:     the answer reached {result['max_new_tokens']} new tokens without ending "
            "and is cut there; --max-new-tokens N reads more",
        )
    return "\n".join(lines)


def _percent(share: float) -> str:
    """A share of the relevance as a percentage (n/a: the map has no positive value)."""
    return f"{100 * share:.0f}%" if share == share else "n/a"
