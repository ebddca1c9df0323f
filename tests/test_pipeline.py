"""train_free_eval.py end to end: real configs composed in-process, a tiny model, synthetic data."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from support.compose import compose_run as _compose
from support.wandb_log import logged
from xattr.pipeline import ConfigError, register_resolvers, run
from xattr.pipeline.results import load_rows, load_skipped
from xattr.pipeline.run import instantiate

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FAST_METHODS = "method=[glimpse,rollout]"


@pytest.fixture()
def model_dir(tiny_model_dir):
    return tiny_model_dir("qwen2_5_vl")


def _table(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())["summary"]


def test_default_config_composes_every_group():
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train_free_eval", return_hydra_config=True)
    import xattr

    # every built-in method (iGOS++ on a reduced budget, and on the first samples only)
    classes = {cfg.method[k]["_target_"].rsplit(".", 1)[1] for k in cfg.method}
    assert classes == {xattr.methods.METHODS.get_class(n).__name__ for n in xattr.methods.builtin()}
    assert cfg.method_limits == {"igos_fast": 20}
    assert cfg.model.family == "qwen2_5_vl"
    assert cfg.data.dataset.n == 200
    assert set(cfg.metrics.map) >= {"nss", "spearman", "pointing_game"}
    assert "faithfulness" in cfg.metrics.model
    assert not cfg.trainer.inference_mode  # gradients must be computable in the test loop


def test_run_writes_rows_table_and_overlays(tmp_path, model_dir):
    cfg = _compose(tmp_path, model_dir, FAST_METHODS)
    summary = run(cfg)
    out = tmp_path / "run"
    rows = load_rows(out)
    assert len(rows) == 4 * 2  # 4 samples x 2 methods
    assert {r["method"] for r in rows} == {"glimpse", "rollout"}
    for r in rows:
        assert {"nss", "spearman", "pointing_game", "deletion_auc"} <= set(r)
    table = _table(out)
    assert table["glimpse"]["nss"]["n"] + table["glimpse"]["nss"]["skipped"] == 4
    assert "| glimpse |" in (out / "results.md").read_text()
    assert summary["samples"] == 4
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len(overlays) == 2 * (1 + 2)  # first 2 samples: image + one overlay per method
    assert (out / "config.yaml").exists()


def test_methods_share_one_trace_per_sample(tmp_path, model_dir, monkeypatch):
    from xattr.models.base import ModelAdapter

    calls = []
    original = ModelAdapter.trace

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelAdapter, "trace", counting)
    cfg = _compose(tmp_path, model_dir, "method=[glimpse,rollout,tmme]", "metrics=agreement")
    run(cfg)
    assert len(calls) == 4


def test_interrupted_run_resumes_to_the_uninterrupted_table(tmp_path, model_dir, monkeypatch):
    from xattr.pipeline.evaluator import SampleEvaluator

    full = _compose(tmp_path / "a", model_dir, FAST_METHODS, "metrics=agreement")
    run(full)

    original = SampleEvaluator.evaluate
    seen = []

    def interrupted(self, sample, methods=None):
        if len(seen) == 2:
            raise KeyboardInterrupt  # the user hits Ctrl-C at the third sample
        seen.append(sample.sample_id)
        return original(self, sample, methods)

    monkeypatch.setattr(SampleEvaluator, "evaluate", interrupted)
    cfg = _compose(tmp_path / "b", model_dir, FAST_METHODS, "metrics=agreement")
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        run(cfg)
    assert len(load_rows(tmp_path / "b" / "run")) == 2 * 2
    monkeypatch.setattr(SampleEvaluator, "evaluate", original)

    resumed = run(_compose(tmp_path / "b", model_dir, FAST_METHODS, "metrics=agreement"))
    assert resumed["this_session"] == {
        "scored": 2,
        "resumed": 2,
        "skipped": 0,
        "out_of_memory": 0,
        "method_failures": 0,
        "rows_resumed": 4,
        "rows_recomputed": 0,
    }
    assert _table(tmp_path / "b" / "run") == _table(tmp_path / "a" / "run")


def test_missing_dataset_fails_before_the_model_loads(tmp_path, model_dir, monkeypatch):
    import xattr

    monkeypatch.setattr(
        xattr.models, "load", lambda *a, **k: pytest.fail("model loaded before data check")
    )
    cfg = _compose(tmp_path, model_dir, "data=vqahat", f"data.dataset.root={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="nowhere") as caught:
        run(cfg)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_unknown_config_name_is_a_clear_error(tmp_path, model_dir):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="glimpsee"):
        _compose(tmp_path, model_dir, "method=[glimpsee]")


def test_corrupt_image_is_skipped_with_its_reason(tmp_path, model_dir):
    cfg = _compose(tmp_path, model_dir, FAST_METHODS, "metrics=agreement")
    from hydra.utils import instantiate

    dataset = instantiate(cfg.data).dataset  # writes the synthetic files
    images = sorted((Path(cfg.data.dataset.root) / "val2014").glob("*.jpg"))
    images[1].write_bytes(b"not a jpeg at all")
    summary = run(cfg)
    skipped = load_skipped(tmp_path / "run")
    assert len(skipped) == 1 and "cannot read image" in skipped[0]["reason"]
    assert summary["skipped_samples"] == 1 and summary["samples"] == len(dataset) - 1


def test_wandb_offline_run_holds_summary_and_images(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = _compose(
        tmp_path, model_dir, FAST_METHODS, "metrics=agreement", "logger=wandb", "data.limit=2"
    )
    run(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    summary = logged(runs[0])  # offline runs keep everything in the run-*.wandb log
    table = _table(tmp_path / "run")
    assert summary["glimpse/nss"] == pytest.approx(table["glimpse"]["nss"]["mean"])
    assert "rollout/spearman" in summary
    media = list((runs[0] / "files" / "media").rglob("*.png"))
    assert media, "overlays were not logged as images"


def test_compare_prints_one_table_across_runs(tmp_path, model_dir, capsys):
    from xattr.cli import main

    for name, methods in (("one", "method=[glimpse]"), ("two", "method=[rollout]")):
        run(_compose(tmp_path / name, model_dir, methods, "metrics=agreement", "data.limit=2"))
    os.rename(tmp_path / "one" / "run", tmp_path / "run_one")
    os.rename(tmp_path / "two" / "run", tmp_path / "run_two")
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "run_one"), str(tmp_path / "run_two")]) == 0
    out = capsys.readouterr().out
    assert "| run_one:glimpse |" in out and "| run_two:rollout |" in out
    assert main(["compare", str(tmp_path / "missing")]) == 2


@pytest.mark.slow
def test_two_process_ddp_gives_the_single_process_table(tmp_path, model_dir):
    """Samples sharded over 2 CPU processes (odd count: the sampler pads with a duplicate)."""
    common = (FAST_METHODS, "metrics=agreement", "data.dataset.n=5")
    single = run(_compose(tmp_path / "one", model_dir, *common))
    sharded = run(_compose(tmp_path / "ddp", model_dir, *common, "trainer=ddp_cpu"))
    assert sorted(p.name for p in (tmp_path / "ddp" / "run").glob("samples*.jsonl")) == [
        "samples.rank0.jsonl",
        "samples.rank1.jsonl",
    ]
    assert sharded["samples"] == single["samples"] == 5
    assert _table(tmp_path / "ddp" / "run") == _table(tmp_path / "one" / "run")


def test_method_limits_run_an_expensive_method_on_the_first_samples_only(tmp_path, model_dir):
    cfg = _compose(
        tmp_path, model_dir, FAST_METHODS, "metrics=agreement", "+method_limits.rollout=2"
    )
    run(cfg)
    rows = load_rows(tmp_path / "run")
    assert sorted(r["sample_id"] for r in rows if r["method"] == "rollout") == ["10", "20"]
    assert len([r for r in rows if r["method"] == "glimpse"]) == 4
    assert (
        _table(tmp_path / "run")["rollout"]["nss"]["n"]
        + _table(tmp_path / "run")["rollout"]["nss"]["skipped"]
        == 2
    )


def test_method_warnings_are_counted_per_sample_not_repeated(
    tmp_path, model_dir, monkeypatch, capsys, caplog
):
    """An AttributionWarning lands in the sample's row, in summary.json's counts, and once in the log."""
    from xattr.methods import AttributionWarning
    from xattr.methods.rollout import Rollout

    original = Rollout.attribute
    seen = []

    def warning_on_two(self, trace):
        seen.append(1)
        if len(seen) % 2:  # the 1st and 3rd samples
            warnings.warn("rollout: test degenerate map", AttributionWarning, stacklevel=2)
        return original(self, trace)

    monkeypatch.setattr(Rollout, "attribute", warning_on_two)
    run(_compose(tmp_path, model_dir, FAST_METHODS, "metrics=agreement"))
    rows = {(r["sample_id"], r["method"]): r["warnings"] for r in load_rows(tmp_path / "run")}
    assert sorted(v for k, v in rows.items() if k[1] == "rollout") == [
        [],
        [],
        ["rollout: test degenerate map"],
        ["rollout: test degenerate map"],
    ]
    assert all(v == [] for k, v in rows.items() if k[1] == "glimpse")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["warnings"] == {"rollout": {"rollout: test degenerate map": 2}}
    assert "- rollout: 2 of 4 samples: rollout: test degenerate map" in capsys.readouterr().out
    logged_once = [r for r in caplog.records if "test degenerate map" in r.getMessage()]
    assert len(logged_once) == 1


def test_progress_bar_names_the_method_as_it_starts(tmp_path, model_dir, monkeypatch):
    """The bar's label is set before each method runs (not after, to the previous one)."""
    from xattr.methods.rollout import Rollout
    from xattr.pipeline.module import XattrProgressBar

    events = []
    show = XattrProgressBar.show_method
    monkeypatch.setattr(
        XattrProgressBar,
        "show_method",
        lambda self, name: events.append(("bar", name)) or show(self, name),
    )
    attribute = Rollout.attribute
    monkeypatch.setattr(
        Rollout,
        "attribute",
        lambda self, trace: events.append(("run", "rollout")) or attribute(self, trace),
    )
    run(_compose(tmp_path, model_dir, FAST_METHODS, "metrics=agreement", "data.dataset.n=1"))
    assert events[:3] == [("bar", "glimpse"), ("bar", "rollout"), ("run", "rollout")]


@pytest.mark.parametrize("where", ["capture", "sweep"])
def test_a_sample_that_runs_out_of_memory_is_skipped_and_counted(
    tmp_path, model_dir, monkeypatch, where
):
    """CUDA OOM in the forward, or a CPU MemoryError in the gradient sweep: that sample is
    skipped with its size recorded, the run goes on."""
    from xattr.methods import runner
    from xattr.models import capture

    calls = {"n": 0}
    target = capture.CaptureMixin if where == "capture" else runner
    name = "_record" if where == "capture" else "run_sweep"
    original = getattr(target, name)

    def fails_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise (
                torch.OutOfMemoryError("CUDA out of memory")
                if where == "capture"
                else MemoryError()
            )
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, fails_once)
    run(_compose(tmp_path, model_dir, FAST_METHODS, "answer=given"))
    skipped = load_skipped(tmp_path / "run")
    assert len(skipped) == 1
    assert re.fullmatch(r"out of memory \(\d+ tokens, \d+ answer tokens\)", skipped[0]["reason"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["this_session"]["out_of_memory"] == 1 and summary["samples"] == 3


def test_metrics_picked_one_by_one(tmp_path, model_dir):
    """``metrics=[nss,faithfulness]``: each registered metric is a choice of the metrics
    group beside the presets, with its class defaults."""
    cfg = _compose(tmp_path, model_dir, "method=[rollout]", "metrics=[nss,faithfulness]")
    assert dict(cfg.metrics.map) == {"nss": {}}
    assert cfg.metrics.model.faithfulness._target_.endswith("DeletionInsertion")
    run(cfg)
    header = (tmp_path / "run" / "results.md").read_text().splitlines()[0]
    assert header.startswith("| method | nss ↑ | deletion_auc ↓ |")


def test_the_synthetic_set_is_logged_by_its_name(tmp_path, model_dir, caplog):
    import logging

    cfg = _compose(tmp_path, model_dir)
    with caplog.at_level(logging.INFO, logger="xattr.data.vqahat"):
        dataset = instantiate(cfg.data).dataset
    assert "synthetic (VQA-HAT layout) val: 4 samples" in caplog.text
    assert "VQA-HAT val:" not in caplog.text and len(dataset) == 4


@pytest.mark.parametrize(
    "data, hit_column", [("synthetic_pairs", "image_hit"), ("synthetic_video", None)]
)
def test_runs_on_several_images_and_on_video(tmp_path, model_dir, data, hit_column):
    """data=synthetic_pairs and data=synthetic_video run the default metrics: the maps are
    scored over every image (or frame), deletion/insertion perturbs every image (or frame)."""
    cfg = _compose(tmp_path, model_dir, FAST_METHODS, f"data={data}", "data.dataset.n=2")
    run(cfg)
    rows = load_rows(tmp_path / "run")
    assert len(rows) == 2 * 2 and not load_skipped(tmp_path / "run")
    for r in rows:
        assert {"nss", "pointing_game"} <= set(r)
        if hit_column:
            assert r[hit_column] in (0.0, 1.0)
        assert r["deletion_auc"] == r["deletion_auc"]  # computed (not NaN)
    overlays = sorted(p.name for p in (tmp_path / "run" / "overlays").glob("*.png"))
    assert overlays and all("_image" in name for name in overlays)


def test_a_model_metric_that_cannot_run_on_an_input_gives_nan(caplog):
    """A model metric raising NotImplementedError (an input it cannot perturb) gives NaN in
    each of its columns, logged once, and the method's row stays."""
    import logging
    import math

    from xattr.pipeline.evaluator import SampleEvaluator

    class Refusing:
        outputs = ("deletion_auc", "faithfulness_passes")

        def __call__(self, *args):
            raise NotImplementedError("perturbing this input is not built yet")

    evaluator = SampleEvaluator(adapter=None, methods={}, map_metrics={},  # type: ignore[arg-type]
                                model_metrics={"faithfulness": Refusing()})  # fmt: skip
    expl = type("E", (), {"meta": {}, "spans": []})()
    sample = type("S", (), {"sample_id": "s", "question": "q?", "num_images": 1})()
    evaluator._map_scores = lambda *a: {}  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            row = evaluator._method_row("glimpse", expl, sample, None, None)
    assert math.isnan(row["deletion_auc"]) and math.isnan(row["faithfulness_passes"])
    assert caplog.text.count("faithfulness: not computed (perturbing this input") == 1
