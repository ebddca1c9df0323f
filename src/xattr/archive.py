"""One sample's explanations in one compressed ``.npz`` that loads without pickle.

A run with ``save_explanations=true`` keeps ``explanations/<sample id>.npz`` per sample:
every method's tensors (`Explanation.tensors`, floats as float32) under ``<method>/<name>``,
its metadata (`Explanation.info`) as a JSON string under ``<method>/info``, the sample's
description (question, answers, ...) as JSON under ``sample``, and a JPEG of the image (long
side at most `IMAGE_SIDE` px) as bytes under ``image``. A prompt of several images keeps the
first under ``image`` and image k (counted from 0) under ``image.k``; a reference map given
per image (a list, None for an image without one) keeps image k's under
``@reference/<name>.k``. Strings and numbers only: the file is read with
``allow_pickle=False``, so loading it cannot run code.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .explanation import Explanation, jsonable
from .images import load_images

RUN_SUBDIR = "explanations"  # a run's folder of saved samples (``save_explanations=true``)
IMAGE_SIDE = 448  # the kept image's long side in px: enough for a report, small on disk
SUFFIX = ".npz"


@dataclass
class SavedSample:
    """What `load_sample` returns: explanations by method, the images, the sample's description."""

    explanations: dict[str, Explanation]
    image: Image.Image | None = None  # the first (or only) image
    info: dict[str, Any] = field(default_factory=dict)
    # what the scores were computed against: "human_map" (float, [0, 1]), "mask" (bool); a
    # prompt of several images may hold a list per name, one entry per image (None: none)
    references: dict[str, Reference] = field(default_factory=dict)
    images: list[Image.Image] = field(default_factory=list)  # every image, in prompt order

    def __post_init__(self) -> None:
        if not self.images and self.image is not None:
            self.images = [self.image]
        if self.image is None and self.images:
            self.image = self.images[0]

    @property
    def num_images(self) -> int:
        return len(self.images)

    def prompt_images(self) -> Image.Image | list[Image.Image] | None:
        """The image, the list of images (several), or None when none was kept."""
        if not self.images:
            return None
        return self.images[0] if len(self.images) == 1 else list(self.images)


Reference = np.ndarray | list[np.ndarray | None]  # one map, or one per image
REFERENCE = "@reference/"  # key prefix of the reference maps ('@' starts no method name)


def sample_path(directory: str | Path, sample_id: str) -> Path:
    """Where sample ``sample_id``'s file lives in ``directory`` (the id made file-name safe)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(sample_id)) or "_"
    return Path(directory) / f"{safe}{SUFFIX}"


def save_sample(
    path: str | Path,
    explanations: Mapping[str, Explanation],
    image: Image.Image | Sequence[Image.Image] | None = None,
    info: Mapping[str, Any] | None = None,
    merge: bool = True,
    references: Mapping[str, Any] | None = None,
) -> Path:
    """Write one sample's explanations (and image or list of images, description, the
    reference maps its scores were computed against) to ``path``, compressed.

    With ``merge`` the methods already in an existing file are kept unless written anew
    (a resumed run that evaluates a sample's missing methods adds them).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    expls = dict(explanations)
    meta = dict(info or {})
    images = [] if image is None else load_images(image)  # type: ignore[arg-type]
    refs = {k: _reference(v) for k, v in (references or {}).items()}
    refs = {k: v for k, v in refs.items() if v is not None}
    if merge and out.exists():
        old = load_sample(out)
        expls = {**old.explanations, **expls}
        meta = {**old.info, **meta}
        images = images or old.images
        refs = {**old.references, **refs}
    arrays: dict[str, np.ndarray] = {"sample": _text(json.dumps(jsonable(meta)))}
    for name, ref in refs.items():
        if "." in name or "/" in name:
            raise ValueError(f"reference name {name!r} cannot contain '.' or '/'")
        if isinstance(ref, list):
            for k, part in enumerate(ref):
                if part is not None:
                    arrays[f"{REFERENCE}{name}.{k}"] = _map(part)
        else:
            arrays[REFERENCE + name] = _map(ref)
    for name, expl in expls.items():
        if "/" in name:
            raise ValueError(f"method name {name!r} cannot contain '/'")
        arrays[f"{name}/info"] = _text(json.dumps(expl.info()))
        for key, tensor in expl.tensors().items():
            arrays[f"{name}/{key}"] = _array(tensor)
    for k, picture in enumerate(images):
        arrays["image" if k == 0 else f"image.{k}"] = _jpeg(picture)
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
    keys = [k for k in arrays if k == "image" or re.fullmatch(r"image\.\d+", k)]
    images = [_decoded(arrays.pop(k)) for k in sorted(keys, key=_image_index)]
    references: dict[str, Reference] = {}
    per_image: dict[str, dict[int, np.ndarray]] = {}
    for key in [k for k in arrays if k.startswith(REFERENCE)]:
        name, dot, index = key.removeprefix(REFERENCE).rpartition(".")
        if dot and index.isdigit():  # image ``index``'s map of a per-image reference
            per_image.setdefault(name, {})[int(index)] = arrays.pop(key)
        else:
            references[key.removeprefix(REFERENCE)] = arrays.pop(key)
    for name, parts in per_image.items():
        count = max(len(images), 1 + max(parts))
        references[name] = [parts.get(k) for k in range(count)]
    by_method: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        method, _, name = key.partition("/")
        by_method.setdefault(method, {})[name] = value
    explanations = {}
    for method, parts in by_method.items():
        meta = json.loads(str(parts.pop("info")))
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in parts.items()}
        explanations[method] = Explanation.from_parts(meta, tensors)
    return SavedSample(explanations, info=info, references=references, images=images)


def saved_samples(directory: str | Path) -> list[Path]:
    """Every saved sample file in ``directory``, sorted by name."""
    return sorted(Path(directory).glob(f"*{SUFFIX}"))


def _text(value: str) -> np.ndarray:
    return np.array(value)  # a 0-d unicode array: no object dtype, no pickle


def _array(tensor: torch.Tensor) -> np.ndarray:
    if tensor.is_floating_point() and tensor.dtype not in (torch.float32, torch.float64):
        tensor = tensor.float()  # bfloat16 has no numpy dtype; float16 is widened alike
    return tensor.numpy()


def _reference(value: Any) -> Reference | None:
    """A reference map as an array, or a per-image list of them (None where an image has
    none); None when there is none at all."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        parts = [None if v is None else np.asarray(v) for v in value]
        return parts if any(p is not None for p in parts) else None
    return np.asarray(value)


def _map(ref: np.ndarray) -> np.ndarray:
    return ref if ref.dtype == bool else ref.astype(np.float32)


def _image_index(key: str) -> int:
    return 0 if key == "image" else int(key.split(".")[1])


def _decoded(jpeg: np.ndarray) -> Image.Image:
    return Image.open(io.BytesIO(jpeg.tobytes())).convert("RGB")


def _jpeg(image: Image.Image) -> np.ndarray:
    rgb = image.convert("RGB")
    scale = IMAGE_SIDE / max(rgb.size)
    if scale < 1:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)
