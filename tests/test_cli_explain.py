"""``xattr explain`` and ``xattr report`` as a user types them, and with bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import xattr
from xattr import Explanation
from xattr.cli import main
from xattr.commands.model_spec import ModelSpecError, resolve
from xattr.data.synthetic import generate_synthetic

QUESTION = "What color is the triangle?"


def _console_script() -> str:
    script = Path(sys.executable).with_name("xattr")
    assert script.exists(), f"the console script is not installed next to {sys.executable}"
    return str(script)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A synthetic image whose question the shipped toy answers ("What color is the triangle?")."""
    sample = next(s for s in generate_synthetic(8, seed=3) if s.question == QUESTION)
    path = tmp_path_factory.mktemp("images") / "shapes.png"
    sample.load_image().save(path)
    return path


def test_explain_with_no_flags_writes_overlays_explanations_and_the_report(shapes, tmp_path):
    done = _run([_console_script(), "explain", str(shapes), QUESTION], cwd=shapes.parent)
    assert done.returncode == 0, done.stderr
    folder = shapes.parent / "explanations" / "shapes"
    methods = ["glimpse", "tmme", "rollout", "raw_attention"]
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(f"{m}.png" for m in methods)
    glimpse = Explanation.load(folder / "glimpse")
    assert glimpse.token_maps is not None and glimpse.layer_maps is not None
    assert glimpse.meta["answer_source"] == "generated"
    # the printed answer is the model's, and it names every file it wrote
    answer = glimpse.meta["answer"]
    lines = done.stdout.splitlines()
    assert lines[0] == f"answer (generated, toy_qwen2_5_vl): {answer}"
    assert answer in {"red", "green", "blue", "yellow", "orange", "purple"}
    assert f"report:   {Path('explanations/shapes/report.html')}" in lines
    assert all(str(Path("explanations/shapes") / f"{m}.png") in done.stdout for m in methods)
    html = (folder / "report.html").read_text()
    assert all(f'"name":"{m}"' in html for m in methods)


def test_python_m_with_methods_answer_and_out(shapes, tmp_path):
    out = tmp_path / "mine"
    args = [sys.executable, "-m", "xattr.cli", "explain", str(shapes), QUESTION,
            "--method", "glimpse", "dexar", "--answer", "the triangle is blue", "--out", str(out)]  # fmt: skip
    done = _run(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "dexar", "dexar.png", "glimpse", "glimpse.png", "report.html"
    ]  # fmt: skip
    glimpse = Explanation.load(out / "glimpse")
    assert [t.strip() for t in glimpse.answer_tokens] == ["the", "triangle", "is", "blue"]
    assert glimpse.meta["answer_source"] == "given"
    assert done.stdout.startswith("answer (given, toy_qwen2_5_vl): the triangle is blue")
    assert Explanation.load(out / "dexar").layer_maps is None  # asked only of methods that have it


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.png", "q"], "image file not found: missing.png"),
        (["corrupt.jpg", "q"], "cannot read image corrupt.jpg"),
        (["{shapes}", "q", "--model", "no_such_model"], "unknown model 'no_such_model'"),
        (["{shapes}", "q", "--model", "qwen2_5_vl:/no/such/dir"], "model directory not found"),
        (["{shapes}", "q", "--method", "glimpse", "nope"], "unknown method(s) nope; known: "),
        # inputs are checked before the model loads: methods first, then the image
        (["missing.png", "q", "--method", "nope", "--model", "x"], "unknown method(s) nope"),
        (["missing.png", "q", "--model", "no_such_model"], "image file not found"),
        (["{shapes}", "q", "--dtype", "fp33"], "unknown dtype 'fp33': expected one of float32"),
        (["{shapes}", "q", "--device", "gpu"], "unknown device 'gpu': expected auto"),
        pytest.param(
            ["{shapes}", "q", "--device", "cuda"],
            "device 'cuda': this torch",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU"),
        ),
    ],
)
def test_bad_inputs_exit_2_with_a_message_naming_them(
    args, message, shapes, tmp_path, capsys, monkeypatch
):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    monkeypatch.chdir(tmp_path)
    assert main(["explain", *(a.format(shapes=shapes) for a in args)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xattr explain: ") and message in err
    assert not (tmp_path / "explanations").exists()


def test_a_checkpoint_folder_as_model(shapes, tmp_path, capsys):
    """``--model DIR``: the family is read from the folder (it was 'None')."""
    folder = xattr.toy.checkpoint("llava")
    args = ["explain", str(shapes), QUESTION, "--model", str(folder), "--method", "rollout",
            "--answer", "blue", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "rollout.png").is_file()
    assert capsys.readouterr().out.startswith(f"answer (given, {folder}): blue")


def test_a_bad_input_through_the_console_script(tmp_path):
    done = _run([_console_script(), "explain", "nothing.jpg", "q"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "xattr explain: image file not found: nothing.jpg"


def test_model_specs():
    assert resolve("toy_llava") == {"family": "llava", "path": str(xattr.toy.checkpoint("llava")),
                                    "dtype": "float32", "device": "cpu", "max_new_tokens": None}  # fmt: skip
    conf = resolve("qwen2_5_vl_7b", device="cpu", dtype=None)
    assert conf == {"family": "qwen2_5_vl", "path": "Qwen/Qwen2.5-VL-7B-Instruct",
                    "dtype": "bfloat16", "device": "cpu", "max_new_tokens": None}  # fmt: skip
    toy_dir = str(xattr.toy.checkpoint("qwen2_5_vl"))
    assert resolve(toy_dir) == {"path": toy_dir}
    assert resolve("llava:org/name") == {"family": "llava", "path": "org/name"}
    with pytest.raises(ModelSpecError, match="families: .*qwen2_5_vl"):
        resolve("nofamily:org/name")


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err


def test_method_settings_generation_length_and_attention_from_the_command_line(
    shapes, tmp_path, capsys
):
    """--set, --max-new-tokens and --attn as a user types them; a cut answer says so."""
    out = tmp_path / "set"
    args = ["explain", str(shapes), QUESTION, "--method", "glimpse", "--set", "glimpse.tau_head=0.25",
            "--set", "glimpse.layers=[2, 3]", "--max-new-tokens", "1", "--attn", "sdpa",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr()
    assert printed.out.splitlines()[1] == (
        "note:     the answer reached 1 new tokens without ending and is cut there; "
        "--max-new-tokens N reads more"
    )
    assert "AnswerCutWarning" not in printed.err  # said once, in the summary
    glimpse = Explanation.load(out / "glimpse")
    assert glimpse.hparams["tau_head"] == 0.25 and glimpse.hparams["layers"] == [2, 3]
    assert len(glimpse.answer_tokens) == 1 and glimpse.meta["answer_cut"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "glimpse.tau_hed=1",
            "glimpse has no hyper-parameter 'tau_hed' (did you mean 'tau_head'?)",
        ),
        ("glimpse.tau_head=-1", "glimpse: tau_head must be > 0, got -1"),
        ("tmme.last_k=2", "'tmme' is not among --method glimpse"),
        ("tau_head=1", "expected METHOD.KEY=VALUE"),
    ],
)
def test_a_bad_setting_is_refused_before_the_model_loads(setting, message, shapes, capsys):
    args = ["explain", str(shapes), QUESTION, "--method", "glimpse", "--set", setting,
            "--model", "no_such_model"]  # fmt: skip
    assert main(args) == 2  # the model name is bad too: the setting is checked first
    assert message in capsys.readouterr().err


def test_a_variant_beside_its_method_keeps_both_under_their_names(shapes, tmp_path, capsys):
    out = tmp_path / "both"
    args = ["explain", str(shapes), QUESTION, "--method", "tmme", "tmme_last12",
            "--answer", "blue", "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert (out / "tmme.png").is_file() and (out / "tmme_last12.png").is_file()
    assert Explanation.load(out / "tmme").hparams["last_k"] is None
    assert Explanation.load(out / "tmme_last12").hparams["last_k"] == 12


def test_a_set_value_is_read_as_hydra_reads_it():
    from xattr.commands.explain import setting_value

    assert setting_value("1e-3") == 0.001 and setting_value("0.25") == 0.25
    assert setting_value("[20, 27]") == [20, 27] and setting_value("last") == "last"
    assert setting_value("true") is True and setting_value("") is None


def test_explain_a_phrase_each_sentence_and_a_contrast(shapes, tmp_path):
    """--target / --sentences / --contrast as typed: what is printed and what is saved."""
    answer = "the triangle is blue. the circle is red."
    base = [_console_script(), "explain", str(shapes), QUESTION, "--answer", answer]
    done = _run([*base, "--sentences", "--method", "glimpse", "--out", "s"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "target:   sentences" in done.stdout
    assert (
        "span 'the triangle is blue .'" in done.stdout
        and "span 'the circle is red .'" in done.stdout
    )
    saved = Explanation.load(tmp_path / "s" / "glimpse")
    assert [s.text.strip() for s in saved.spans] == [
        "the triangle is blue .",
        "the circle is red .",
    ]
    done = _run([*base, "--target", "blue", "--contrast", "green", "--out", "c"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "contrast: 'blue' and not 'green'" in done.stdout
    # the default methods that cannot explain a contrast (rollout, raw attention) are left out
    assert sorted(p.name for p in (tmp_path / "c").glob("*.png")) == ["glimpse.png", "tmme.png"]
    done = _run([*base, "--target", "purple"], cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"xattr explain: 'purple' is not in the answer {answer.replace('.', ' .')!r}"
    )


def test_two_images_and_a_question_as_a_user_types_them(tmp_path, capsys, monkeypatch):
    """``xattr explain a.png b.png "..."``: one prompt shows both; every method's overlay per
    image under the default folder, each image's share printed, both images in the report."""
    import json
    import re

    import numpy as np
    from PIL import Image

    samples = generate_synthetic(8, seed=3)
    a = next(s for s in samples if s.question == "What color is the circle?")
    b = next(s for s in samples if s.question == QUESTION)
    a.load_image().save(tmp_path / "a.png")
    b.load_image().save(tmp_path / "b.png")
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "a.png", "b.png", "Which image shows a red circle?"]) == 0
    out = capsys.readouterr().out.splitlines()
    folder = tmp_path / "explanations" / "a+b"
    methods = ["glimpse", "tmme", "rollout", "raw_attention"]
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(
        f"{m}_image{k}.png" for m in methods for k in (1, 2)
    )
    assert out[1:3] == ["image 1:  a.png", "image 2:  b.png"]
    pictures = [Image.open(tmp_path / n).convert("RGB") for n in ("a.png", "b.png")]
    report = (folder / "report.html").read_text()
    page = json.loads(re.search(r'id="xattr-data">(.*?)</script>', report).group(1))
    assert report.count('src="data:image/jpeg;base64,') == 2
    assert [(i["width"], i["height"]) for i in page["images"]] == [p.size for p in pictures]
    for name in methods:
        expl = Explanation.load(folder / name)
        shares = expl.image_shares.tolist()
        assert expl.num_images == 2 and sum(shares) == pytest.approx(1, abs=1e-6)
        printed = ", ".join(f"image {k + 1} {100 * s:.0f}%" for k, s in enumerate(shares))
        assert f"shares:   {name}: {printed}" in out
        view = next(m for m in page["methods"] if m["name"] == name)
        assert [i["share"] for i in view["images"]] == pytest.approx(shares)
        # each overlay is that image under that image's own map
        for k, picture in enumerate(pictures):
            saved = np.asarray(Image.open(folder / f"{name}_image{k + 1}.png"))
            assert np.array_equal(saved, np.asarray(expl.overlay(picture, index=k)))


def test_a_missing_second_image_exits_2_naming_it(shapes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["explain", str(shapes), "gone.png", "Which is red?"]) == 2
    assert capsys.readouterr().err.strip() == "xattr explain: image file not found: gone.png"
    assert not (tmp_path / "explanations").exists()


def test_a_video_as_a_user_types_it(tmp_path, capsys, monkeypatch):
    """``xattr explain --video clip.mp4 "..." --num-frames 4``: overlays per sampled frame
    under explanations/clip, each frame's share printed (a frame pair's share split over its
    two frames), the frames in the report."""
    from support.video import write_mp4
    from xattr.data.synthetic_video import generate_synthetic_videos

    sample = generate_synthetic_videos(1, seed=5, frames=8)[0]
    write_mp4(tmp_path / "clip.mp4", sample.load_images(), rate=4)
    monkeypatch.chdir(tmp_path)
    args = ["explain", "--video", "clip.mp4", sample.question, "--num-frames", "4"]
    assert main([*args, "--method", "glimpse", "raw_attention"]) == 0
    out = capsys.readouterr().out.splitlines()
    folder = tmp_path / "explanations" / "clip"
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(
        f"{m}_frame{k}.png" for m in ("glimpse", "raw_attention") for k in (1, 2, 3, 4)
    )
    assert "video:    clip.mp4" in out
    expl = Explanation.load(folder / "glimpse")
    assert expl.num_frames == 4 and [g.frames for g in expl.grids] == [(0, 2), (2, 4)]
    shares = expl.frame_shares.tolist()
    assert shares[0] == pytest.approx(shares[1])
    printed = ", ".join(f"frame {k + 1} {100 * s:.0f}%" for k, s in enumerate(shares))
    assert f"shares:   glimpse: {printed}" in out
    assert main(["explain", "--video", "gone.mp4", "What moves?"]) == 2
    assert "video file not found: gone.mp4" in capsys.readouterr().err
    assert main(["explain", "a.png", "What moves?", "--video", "clip.mp4"]) == 2
    assert "not both" in capsys.readouterr().err
