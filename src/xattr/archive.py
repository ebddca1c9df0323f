"""One sample's explanations in one compressed ``.npz`` that loads without pickle.

A run with ``save_explanations=true`` keeps ``explanations/<sample id>.npz`` per sample:
every method's tensors (`Explanation.tensors`, floats as float32) under ``<method>/<name>``,
its metadata (`Explanation.info`) as a JSON string under ``<method>/info``, the sample's
description (question, answers, ...) as JSON under ``sample``, and a JPEG of the image (long
side at most `IMAGE_SIDE` px) as bytes under ``image``. Strings and numbers only: the file
is read with ``allow_pickle=False``, so loading it cannot run code.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .explanation import Explanation, jsonable

RUN_SUBDIR = "explanations"  # a run's folder of saved samples (``save_explanations=true``)
IMAGE_SIDE = 448  # the kept image's long side in px: enough for a report, small on disk
SUFFIX = ".npz"


@dataclass
class SavedSample:
    """What `load_sample` returns: explanations by method, the image, the sample's description."""

    explanations: dict[str, Explanation]
    image: Image.Image | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # what the scores were computed against: "human_map" (float, [0, 1]), "mask" (bool)
    references: dict[str, np.ndarray] = field(default_factory=dict)


REFERENCE = "@reference/"  # key prefix of the reference maps ('@' starts no method name)


def sample_path(directory: str | Path, sample_id: str) -> Path:
    """Where sample ``sample_id``'s file lives in ``directory`` (the id made file-name safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(sample_id)) or "_"
    return Path(directory) / f"{safe}{SUFFIX}"


def save_sample(
    path: str | Path,
    explanations: Mapping[str, Explanation],
    image: Image.Image | None = None,
    info: Mapping[str, Any] | None = None,
    merge: bool = True,
    references: Mapping[str, Any] | None = None,
) -> Path:
    """Write one sample's explanations (and image, description, the reference maps its scores
    were computed against) to ``path``, compressed.

    With ``merge`` the methods already in an existing file are kept unless written anew
    (a resumed run that evaluates a sample's missing methods adds them).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    expls = dict(explanations)
    meta = dict(info or {})
    refs = {k: np.asarray(v) for k, v in (references or {}).items() if v is not None}
    if merge and out.exists():
        old = load_sample(out)
        expls = {**old.explanations, **expls}
        meta = {**old.info, **meta}
        image = image if image is not None else old.image
        refs = {**old.references, **refs}
    arrays: dict[str, np.ndarray] = {"sample": _text(json.dumps(jsonable(meta)))}
    for name, ref in refs.items():
        arrays[REFERENCE + name] = ref if ref.dtype == bool else ref.astype(np.float32)
    for name, expl in expls.items():
        if "/" in name:
            raise ValueError(f"method name {name!r} cannot contain '/'")
        arrays[f"{name}/info"] = _text(json.dumps(expl.info()))
        for key, tensor in expl.tensors().items():
            arrays[f"{name}/{key}"] = _array(tensor)
    if image is not None:
        arrays["image"] = _jpeg(image)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("wb") as fh:  # a file object: numpy would append .npz to a path
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
    tmp.replace(out)  # an interruption never leaves a half-written file under the real name
    return out


def load_sample(path: str | Path) -> SavedSample:
    """Read a file written by `save_sample` (``allow_pickle=False``: data only)."""
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"no saved explanations at {src}")
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    info = json.loads(str(arrays.pop("sample"))) if "sample" in arrays else {}
    image = None
    if "image" in arrays:
        image = Image.open(io.BytesIO(arrays.pop("image").tobytes())).convert("RGB")
    references = {
        k.removeprefix(REFERENCE): arrays.pop(k) for k in list(arrays) if k.startswith(REFERENCE)
    }
    by_method: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        method, _, name = key.partition("/")
        by_method.setdefault(method, {})[name] = value
    explanations = {}
    for method, parts in by_method.items():
        meta = json.loads(str(parts.pop("info")))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in parts.items()}
        explanations[method] = Explanation.from_parts(meta, tensors)
    return SavedSample(explanations, image, info, references)


def saved_samples(directory: str | Path) -> list[Path]:
    """Every saved sample file in ``directory``, sorted by name."""
    return sorted(Path(directory).glob(f"*{SUFFIX}"))


def _text(value: str) -> np.ndarray:
    return np.array(value)  # a 0-d unicode array: no object dtype, no pickle


def _array(tensor: torch.Tensor) -> np.ndarray:
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()  # bfloat16 has no numpy dtype; float16 is widened alike
    return tensor.numpy()


def _jpeg(image: Image.Image) -> np.ndarray:
    rgb = image.convert("RGB")
    scale = IMAGE_SIDE / max(rgb.size)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)
