"""Samples of several images or of a video written as a JSONL folder (`xattr.data.JsonlDataset`).

Each sample's images (or a video's frames) become PNGs under ``images/``, its per-image masks
PNGs under ``masks/`` (``null`` where an image has none), one ``questions.jsonl`` line per
sample (``"images"`` or ``"video"`` as a list of frame paths, with its ``"fps"``), and
``<name>_meta.json`` records the generator's parameters and each sample's ``meta``. Lossless
(PNG), so what is read back is what was generated.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from xattr.data.maps import write_map_png
from xattr.data.sample import Sample
from xattr.video import Video


def write_jsonl_folder(
    samples: list[Sample], root: str | Path, params: dict[str, Any], name: str
) -> Path:
    """Write ``samples`` under ``root`` (module docstring); ``params`` go to ``<name>_meta.json``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    lines = []
    for s in samples:
        video = s.image if isinstance(s.image, Video) else None
        pictures, masks = [], []
        for k, image in enumerate(s.load_images()):
            image.save(root / "images" / f"{s.sample_id}_{k}.png")
            pictures.append(f"images/{s.sample_id}_{k}.png")
            mask = s.mask[k] if isinstance(s.mask, list) else None
            if mask is None:
                masks.append(None)
                continue
            write_map_png(root / "masks" / f"{s.sample_id}_{k}.png", mask.astype(np.float32))
            masks.append(f"masks/{s.sample_id}_{k}.png")
        line: dict[str, Any] = {"id": s.sample_id, "question": s.question, "answer": s.answer}
        if video is not None:
            times = video.timestamps()
            line |= {"video": pictures, "fps": (len(times) - 1) / times[-1] if times[-1] else None}
        else:
            line["images"] = pictures
        line |= {"mask": masks, "human_map": masks}
        line |= {k: s.meta[k] for k in ("answer_image",) if k in s.meta}
        lines.append(line)
    (root / "questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    meta = {"generator": params, "questions": {s.sample_id: s.meta for s in samples}}
    (root / f"{name}_meta.json").write_text(json.dumps(meta))
    return root
