"""Read an offline W&B run's transaction log (``run-*.wandb``) to check what was logged.

The file is a LevelDB-style log (a 7-byte W&B header, then 32 KiB blocks of records:
crc32c u32, length u16, type u8, payload; a record may be split FIRST/MIDDLE/LAST across
blocks) whose payloads are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, pos)
        body = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""
        elif kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0


def _records(run_dir: Path, timeout: float = 60.0) -> list[Any]:
    """The run's records, once its ``exit`` record is on disk (wandb's service writes the log
    asynchronously, so right after ``wandb.finish()`` its tail may still be missing)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = next(Path(run_dir).glob("run-*.wandb"))
    deadline = time.monotonic() + timeout
    while True:
        records = []
        for payload in _payloads(path.read_bytes()):
            record = pb.Record()
            record.ParseFromString(payload)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise TimeoutError(f"no exit record in {path} after {timeout} s")
        time.sleep(0.2)


def logged(run_dir: Path) -> dict[str, Any]:
    """Every history and summary key of an offline run with its last value."""
    values: dict[str, Any] = {}
    for record in _records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = record.history.item
        elif kind == "summary":
            items = record.summary.update
        else:
            continue
        for item in items:
            key = item.key or "/".join(item.nested_key)
            values[key] = json.loads(item.value_json)
    return values


def run_info(run_dir: Path) -> dict[str, Any]:
    """The run record of an offline run: project, group, job type and tags as W&B stores them."""
    for record in _records(run_dir):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            return {
                "project": run.project,
                "group": run.run_group,
                "job_type": run.job_type,
                "tags": list(run.tags),
            }
    raise ValueError(f"no run record in {run_dir}")


def artifacts(run_dir: Path) -> dict[str, dict[str, Path]]:
    """Every artifact an offline run logged: ``{name: {path in the artifact: staged file}}``."""
    out: dict[str, dict[str, Path]] = {}
    for record in _records(run_dir):
        if record.WhichOneof("record_type") == "artifact":
            entries = record.artifact.manifest.contents
            out[record.artifact.name] = {e.path: Path(e.local_path) for e in entries}
    return out
