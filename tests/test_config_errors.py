"""Bad configured values as users type them on the command line: one line on stderr naming
the value and its rule, exit status 2, no traceback, nothing written in the run folder (so
the next run does not report the bad value as a configuration change)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support.entry import run_entry_point


def _refused(tmp_path: Path, *overrides: str) -> str:
    """Run the entry point with ``overrides`` in ``tmp_path``; it must refuse in one line."""
    done = run_entry_point(tmp_path, "data.limit=1", *overrides)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not list(tmp_path.glob("logs/**/fingerprints.json"))
    ours = [p for p in tmp_path.glob("logs/**/config.yaml") if ".hydra" not in p.parts]
    assert not ours  # Hydra's own .hydra/ job record is written before the job starts
    return lines[0]


def test_a_negative_temperature_names_the_rule(tmp_path):
    line = _refused(tmp_path, "method=[glimpse]", "method.glimpse.tau_head=-1")
    assert line == "error: glimpse: tau_head must be > 0, got -1"  # the rule `xattr list` prints


def test_a_layer_the_model_does_not_have_is_named_with_the_layer_count(tmp_path):
    from xattr.toy.recipe import TEXT_LAYERS  # the shipped toy's depth

    n = TEXT_LAYERS
    line = _refused(tmp_path, "method=[glimpse]", f"method.glimpse.layers=[{n}]")
    assert (
        line == f"error: glimpse: layers [{n}]: layer {n} out of range for a model with {n} layers"
    )


def test_an_unknown_dtype_names_the_nearest(tmp_path):
    line = _refused(tmp_path, "method=[rollout]", "model.dtype=fp33")
    assert line.startswith("error: unknown dtype 'fp33'") and "did you mean 'fp32'?" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_on_a_cpu_machine_is_one_line(tmp_path):
    line = _refused(tmp_path, "method=[rollout]", "model.device=cuda")
    assert "device 'cuda': this torch" in line and "use device=auto" in line


def test_an_unknown_metric_names_the_nearest(tmp_path):
    line = _refused(tmp_path, "method=[rollout]", "+metrics.map.nsss={}")
    assert line.startswith("error: unknown metric 'nsss' (did you mean 'nss'?); known: auc_judd")


def test_a_model_metric_listed_as_a_map_metric_says_where_it_goes(tmp_path):
    line = _refused(tmp_path, "method=[rollout]", "+metrics.map.faithfulness={}")
    assert line == (
        "error: faithfulness puts the model in the loop: list it under metrics.model "
        "(metrics=[faithfulness] adds it there), not metrics.map"
    )


def test_a_model_that_fails_to_load_for_another_reason_keeps_its_traceback(tmp_path):
    """Only bad configured values are one line: a checkpoint whose weights are broken is not
    a configuration error, and its traceback is what the user needs."""
    import shutil

    import xattr

    broken = tmp_path / "broken"
    shutil.copytree(xattr.toy.checkpoint("llava"), broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    done = run_entry_point(tmp_path, "data.limit=1", "method=[rollout]", "model=toy_llava",
                           f"model.path={broken}", env={"HYDRA_FULL_ERROR": "1"})  # fmt: skip
    assert done.returncode == 1 and "Traceback" in done.stderr
    assert not done.stderr.startswith("error: ")
