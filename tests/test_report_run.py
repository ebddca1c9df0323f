"""save_explanations=true keeps every sample's explanations; `xattr report` and W&B read them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import xattr
from support.compose import compose_run
from support.wandb_log import artifacts, logged
from xattr.archive import load_sample, saved_samples
from xattr.pipeline import run
from xattr.pipeline.results import load_rows
from xattr.pipeline.run import instantiate
from xattr.report import build_run_report

METHODS = "method=[glimpse,rollout]"


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, tiny_model_dir):
    """One run of 4 samples with saved explanations (GLIMPSE with its per-token maps)."""
    tmp = tmp_path_factory.mktemp("saved_run")
    model_dir = tiny_model_dir("qwen2_5_vl")
    cfg = compose_run(
        tmp, model_dir, METHODS, "metrics=agreement", "save_explanations=true",
        "method.glimpse.return_token_maps=true",
    )  # fmt: skip
    run(cfg)
    return tmp / "run", model_dir, cfg


def test_the_default_run_saves_no_explanations(tmp_path, tiny_model_dir, capsys):
    """...and `xattr report` on it says how to get per-sample pages, on stdout and the page."""
    from xattr.cli import main

    cfg = compose_run(tmp_path, tiny_model_dir("qwen2_5_vl"), "method=[rollout]",
                      "metrics=agreement", samples=1)  # fmt: skip
    assert cfg.save_explanations is False
    run(cfg)
    assert not (tmp_path / "run" / "explanations").exists()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run"), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("note:   no per-sample pages: this run kept no explanations")
    assert "save_explanations=true" in lines[1]
    assert "save_explanations=true" in (tmp_path / "run" / "report" / "index.html").read_text()


def test_every_sample_is_saved_with_the_maps_the_run_computed(saved_run):
    run_dir, model_dir, cfg = saved_run
    files = saved_samples(run_dir / "explanations")
    rows = load_rows(run_dir)
    assert len(files) == len({r["sample_id"] for r in rows}) == 4
    sample = load_sample(files[0])
    assert set(sample.explanations) == {"glimpse", "rollout"}
    glimpse = sample.explanations["glimpse"]
    assert glimpse.token_maps is not None and sample.explanations["rollout"].token_maps is None
    # the saved maps are the ones the model gives for this sample's image, question and answer
    (original,) = [
        s for s in instantiate(cfg.data).dataset if s.sample_id == sample.info["sample_id"]
    ]
    assert sample.info["question"] == original.question
    # ...with what its scores were computed against, as the dataset gave it
    assert set(sample.references) == {"human_map", "mask"}
    np.testing.assert_allclose(sample.references["human_map"], original.human_map)
    np.testing.assert_array_equal(sample.references["mask"], original.mask)
    again = xattr.explain(
        xattr.models.load(model_dir), original.load_image(), original.question,
        method="glimpse", answer=sample.info["model_answer"], return_token_maps=True,
    )  # fmt: skip
    assert again.answer_tokens == glimpse.answer_tokens
    torch.testing.assert_close(glimpse.visual, again.visual)
    torch.testing.assert_close(glimpse.token_maps, again.token_maps)
    assert sample.image.size == original.load_image().size  # 112 px: kept at full size


def test_report_builds_an_index_and_a_page_per_saved_sample(saved_run, tmp_path):
    run_dir = saved_run[0]
    index = build_run_report(run_dir, tmp_path / "report", progress=False)
    pages = sorted((tmp_path / "report" / "samples").glob("*.html"))
    assert len(pages) == 4
    html = index.read_text()
    assert len(re.findall(r'href="samples/[^"]+\.html"', html)) == 4
    assert "<td>glimpse</td>" in html and "nss ↑" in html and "±" in html
    page = pages[0].read_text()
    assert 'id="xattr-data"' in page and "Scores of this sample" in page
    data = json.loads(re.search(r'id="xattr-data">(.*?)</script>', page, re.S).group(1))
    names = [r["name"] for r in data["references"]]
    assert names == ["human attention map", "object mask"]  # what the scores used
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_xattr_report_prints_the_index_and_shows_progress(saved_run, tmp_path, capsys):
    from xattr.cli import main

    assert main(["report", str(saved_run[0]), "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"report: {tmp_path / 'r' / 'index.html'}"
    assert "report pages" in err and "4/4" in err  # the progress bar over the samples


def test_report_names_a_missing_or_empty_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        build_run_report(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no results"):
        build_run_report(tmp_path)


def test_an_unreadable_saved_sample_is_noted_not_fatal(saved_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(saved_run[0], run_dir, ignore=shutil.ignore_patterns("report"))
    (run_dir / "explanations" / "broken.npz").write_bytes(b"not a zip")
    index = build_run_report(run_dir, progress=False)
    assert "unreadable saved sample broken.npz" in index.read_text()
    assert len(list((run_dir / "report" / "samples").glob("*.html"))) == 4


def test_wandb_gets_the_report_pages(tmp_path, tiny_model_dir, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_run(tmp_path, tiny_model_dir("qwen2_5_vl"), "method=[rollout]",
                      "metrics=agreement", "logger=wandb", "save_explanations=true", samples=2)  # fmt: skip
    run(cfg)
    printed = capfd.readouterr()
    assert "\x1b[A" not in printed.out + printed.err  # no second bar nested under the run's
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    summary = logged(offline)
    assert summary["reports/_type"] == "table-file" and summary["reports/nrows"] == 2
    # the table's Html cells travel in its artifact: one report page per saved sample
    (files,) = [f for name, f in artifacts(offline).items() if name.endswith("-reports")]
    pages = [staged for path, staged in files.items() if path.endswith(".html")]
    assert len(pages) == 2 and all('id="xattr-data"' in p.read_text() for p in pages)
