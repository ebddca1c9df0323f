"""The synthetic grounding set on disk: written in the VQA-HAT layout, its generator record read back.

``write_synthetic_vqahat`` draws today's questions (`xattr.data.synthetic`) mixed with a
share of relational and counting ones (`xattr.data.synthetic_relations`) and writes them with
`xattr.data.vqahat_writer.write_vqahat`, plus a sidecar recording the generator's
parameters and each question's objects; ``read_synthetic_meta`` reads the objects back.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xattr.data.sample import Sample
from xattr.data.synthetic import SyntheticConfig, synthetic_config
from xattr.data.synthetic_relations import COMPOSITE, with_relations
from xattr.data.vqahat_writer import write_vqahat


def write_synthetic_vqahat(
    root: str | Path,
    n: int,
    seed: int,
    split: str = "val",
    relational: float = 0.0,
    *,
    n_maps: int = 3,
    map_jitter: int = 0,
    jpeg_quality: int = 95,
    **generator_kwargs: Any,
) -> list[Sample]:
    """Generate ``n`` samples and write them under ``root`` in the VQA-HAT layout (SPEC §8).

    ``relational`` is the share of relational and counting questions
    (`xattr.data.synthetic_relations.with_relations`; their mask is the answer object's, or
    the counted objects').

    The split's earlier maps and images are deleted first (``write_vqahat(clean=True)``).
    Besides the VQA-HAT files, ``synthetic_{split}_meta.json`` records the generator
    parameters and each question's object metadata (the VQA-HAT loader ignores it).
    """
    cfg = synthetic_config(**generator_kwargs)
    samples = with_relations(cfg, n, seed, relational)
    root = write_vqahat(
        samples,
        root,
        split,
        n_maps=n_maps,
        map_jitter=map_jitter,
        seed=seed,
        jpeg_quality=jpeg_quality,
        clean=True,
    )
    sidecar = {
        "generator": generator_record(n, seed, relational, cfg),
        "writer": {"n_maps": n_maps, "map_jitter": map_jitter, "jpeg_quality": jpeg_quality},
        "questions": {s.sample_id: s.meta for s in samples},
    }
    (root / f"synthetic_{split}_meta.json").write_text(json.dumps(sidecar))
    return samples


def generator_record(n: int, seed: int, relational: float, cfg: SyntheticConfig) -> dict[str, Any]:
    """How a written set was drawn, as its sidecar records it (a set is reused only on a match):
    the question kinds mixed in (`COMPOSITE`) included, so a new kind rewrites an old set."""
    return {"n": n, "seed": seed, "relational": relational, "composite": list(COMPOSITE),
            **asdict(cfg)}  # fmt: skip


def read_synthetic_meta(root: str | Path, split: str = "val") -> dict[str, dict[str, Any]]:
    """Per-question generator meta (objects, boxes, queried index) keyed by sample id.

    Join it to samples read back with ``VQAHATDataset`` (``meta.update(side[s.sample_id])``)
    when code needs the objects, e.g. to blur one of them.
    """
    path = Path(root) / f"synthetic_{split}_meta.json"
    return json.loads(path.read_text())["questions"]
