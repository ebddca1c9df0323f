"""README.md, run literally: every shell command of its ``bash`` blocks and every ``python`` block.

README.md is parsed when the tests are collected, so a README change is tested as it is
written. Commands run in order in one temporary directory (a copy of the entry point and
``conf/``), as a user would type them there. What has to change to run here is in the
tables below, and nothing else: real models and dataset roots become the shipped toy model
and a small synthetic set, sample limits are appended to ``train_free_eval.py`` commands,
run-directory placeholders of ``xattr compare`` become the runs the earlier commands made.
Sweeps run without ``hydra.sweep.dir``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import xattr
from support.wandb_log import run_info
from xattr.pipeline.results import load_rows

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOY = str(xattr.toy.checkpoint("qwen2_5_vl"))

# ---------------------------------------------------------------- what changes to run here
# README text -> what runs here (a real model / GPU / dataset root -> the toy equivalents)
SUBSTITUTIONS = {
    '"Qwen/Qwen2.5-VL-7B-Instruct"': repr(TOY),  # the shipped toy of the same class
    'dtype="bfloat16", device="cuda"': 'dtype="float32", device="cpu"',
    "model=qwen2_5_vl_7b": f"model=qwen2_5_vl_7b model.path={TOY} model.dtype=float32 model.device=cpu",
    "data.dataset.root=/data/vqahat": "data.dataset.root=vqahat",  # synthetic, VQA-HAT layout
    "trainer=gpu": "trainer=default",  # no GPU here
    "--model qwen2_5_vl_7b": f"--model qwen2_5_vl:{TOY}",  # FAMILY:PATH, on the CPU
}
# `xattr compare` placeholders -> the runs made by the README's own commands above them
RUN_PLACEHOLDERS = {
    "logs/train_free_eval/runs/2026-11-22_10-00-00": "logs/train_free_eval/runs/*",  # VQA-HAT run
    "logs/train_free_eval/runs/2026-11-22_11-30-00": "runs/quick",
    "logs/glimpse_ablation/multiruns/2026-11-22_12-00-00": "logs/glimpse_ablation/multiruns/*",
    "RUN_A": "runs/quick",
    "RUN_B": "logs/glimpse_table2/runs/*",
}
# appended to every train_free_eval.py command (a later override wins over the README's)
LIMITS = {"run": "data.limit=2", "sweep": "data.limit=1"}
# names the Python blocks use without defining them (the Trace.from_tensors example)
PRELUDES = {
    "xattr.Trace.from_tensors(": """
import torch, xattr
g = torch.Generator().manual_seed(0)
n, layers, heads = 9, 2, 2
causal = torch.ones(n, n).tril().bool()
logits = torch.randn(layers, heads, n, n, generator=g).masked_fill(~causal, -torch.inf)
attentions = list(torch.softmax(logits, -1))
gradients = torch.randn(2, layers, heads, n, n, generator=g)
v, p, s = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 6]), torch.tensor([7, 8])
h, w, c = 2, 2, torch.tensor([0.9, 0.8])
""",
}
# checks after a Python block, beyond running without error
EPILOGUES = {
    'expl.save("out/glimpse")': """
from pathlib import Path
assert Path("glimpse.png").is_file() and Path("out/glimpse").exists()
assert set(maps) == {"glimpse", "tmme", "rollout"}
assert all(m.visual.shape == expl.visual.shape for m in maps.values())
""",
    'target="sentences"': """
assert [s.text.strip() for s in expl.spans] == ["the circle is red .", "the square is blue ."]
assert expl.span_pixels(1, (224, 224)).shape == (224, 224)
""",
    "xattr.Trace.from_tensors(": """
assert xattr.methods.get("glimpse").explain(trace).visual.shape == (2, 2)
assert expl.hparams["tau_head"] == 0.25 and set(maps) == {"glimpse", "tmme", "rollout"}
assert all(m.visual.shape == (2, 2) for m in maps.values())
""",
    "class GradientNorm": """
import xattr
assert "gradient_norm" in xattr.methods.available()
""",
}
# what cannot run here, and why
SKIP = {
    "make run": "creates .venv and installs first; the command it runs (python "
    "train_free_eval.py, no arguments) is tests/test_console.py's default run",
    "make test": "is this test suite (and ruff)",
    "make test-latest": "is this test suite in a fresh environment of the newest releases "
    "(minutes of downloads); tests/test_lock.py tests its drift report",
    "make lock": "rewrites requirements-lock.txt; tests/test_lock.py tests it on a stand-in",
}


# ---------------------------------------------------------------- reading the README
def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


def _shell_commands() -> list[str]:
    """Each command of the bash blocks, continuation lines joined, comment lines dropped."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split())
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _skip_reason(text: str) -> str | None:
    """Why a command cannot run here (the longest SKIP key it starts with), or None."""
    keys = [key for key in SKIP if text.lstrip().startswith(key)]
    return SKIP[max(keys, key=len)] if keys else None


def _substitute(text: str) -> str:
    for old, new in SUBSTITUTIONS.items():
        text = text.replace(old, new)
    return text


def _param(i: int, text: str, slow: bool = False):
    first = text.strip().splitlines()[0][:70]
    return pytest.param(text, id=f"{i}:{first}", marks=[pytest.mark.slow] if slow else [])


COMMANDS = [_param(i, c, slow=" -m " in c) for i, c in enumerate(_shell_commands())]
PYTHON_BLOCKS = [_param(i, b) for i, b in enumerate(_blocks("python"))]


# ---------------------------------------------------------------- the user's directory
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A fresh directory with the entry point, conf/, a photo and a VQA-HAT-layout folder."""
    from support.video import write_mp4
    from xattr.data import generate_synthetic, write_synthetic_vqahat
    from xattr.data.synthetic_pairs import generate_synthetic_pairs
    from xattr.data.synthetic_video import generate_synthetic_videos

    ws = tmp_path_factory.mktemp("readme")
    (ws / "train_free_eval.py").write_text((ROOT / "train_free_eval.py").read_text())
    (ws / "conf").symlink_to(ROOT / "conf")
    generate_synthetic(1, seed=3)[0].load_image().save(ws / "photo.jpg")
    write_synthetic_vqahat(ws / "vqahat", n=4, seed=7)
    before, after = generate_synthetic_pairs(1, seed=3)[0].load_images()
    before.save(ws / "before.jpg")
    after.save(ws / "after.jpg")
    write_mp4(ws / "clip.mp4", generate_synthetic_videos(1, seed=3)[0].load_images(), rate=4)
    return ws


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    bin_dir = str(Path(sys.executable).parent)  # `python` and `xattr` are this environment's
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "WANDB_MODE": "offline"}


def _only(ws: Path, pattern: str) -> Path:
    found = sorted(ws.glob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0]


def _resolve_runs(command: str, ws: Path) -> str:
    for placeholder, pattern in RUN_PLACEHOLDERS.items():
        if placeholder in command:
            command = command.replace(placeholder, str(_only(ws, pattern).relative_to(ws)))
    return command


def _as_run_here(command: str, ws: Path) -> str:
    command = _resolve_runs(_substitute(command), ws)
    if "train_free_eval.py" in command:
        command = re.sub(r"\s+#\s.*$", "", command)  # a trailing comment would swallow the limit
        command += " " + LIMITS["sweep" if " -m " in command else "run"]
    return command


# ---------------------------------------------------------------- the tests
def test_tables_name_only_what_the_readme_says():
    """A substitution or skip whose README text is gone would hide a README change."""
    for key in (*SUBSTITUTIONS, *RUN_PLACEHOLDERS, *PRELUDES, *EPILOGUES, *SKIP):
        assert key in README, f"{key!r} is no longer in README.md"
    assert len(COMMANDS) >= 10 and len(PYTHON_BLOCKS) >= 4


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_shell_command(workspace, command):
    if why := _skip_reason(command):
        pytest.skip(why)
    ws = workspace
    here = _as_run_here(command, ws)
    done = subprocess.run(
        ["bash", "-c", here], cwd=ws, capture_output=True, text=True, env=_env(), timeout=600
    )
    assert done.returncode == 0, f"{here}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    _check(command, done.stdout, ws)


def _check(command: str, out: str, ws: Path) -> None:
    """What each journey must have produced, beyond exit status 0."""
    if command.startswith("xattr compare"):
        assert out.startswith("| a − b |" if "--paired" in command else "| method |"), out
        lines = out.strip().splitlines()[2:]
        assert lines and any("n/a" not in line for line in lines), out  # numbers, not only n/a
    elif command.startswith("xattr explain"):
        given = re.search(r"--out (\S+)", command)
        inputs = re.findall(
            r"(\S+)\.(?:jpg|png|mp4)\b", command.split('"')[0]
        )  # before the question
        folder = ws / (given.group(1) if given else "explanations/" + "+".join(inputs))
        assert out.startswith("answer (") and (folder / "report.html").is_file(), out
        overlay = "glimpse.png" if len(inputs) == 1 else "glimpse_image1.png"
        if "--video" in command:  # one overlay per sampled frame
            overlay = "glimpse_frame1.png"
        assert "glimpse" in out and (folder / overlay).is_file(), sorted(folder.iterdir())
    elif command.startswith("xattr report"):
        index = ws / command.split()[2] / "report" / "index.html"
        assert out.strip() == f"report: {index.relative_to(ws)}" and index.is_file()
        assert len(list(index.parent.glob("samples/*.html"))) == 2  # data.limit=2, both saved
    elif "logger=wandb" in command:
        run_dir = _only(ws, "logs/train_free_eval/runs/*")
        assert {r["method"] for r in load_rows(run_dir)} == {"glimpse", "tmme", "rollout"}
        info = run_info(_only(run_dir, "wandb/offline-run-*"))
        assert info["group"] == "train_free_eval" and info["project"] == "xattr"
    elif "experiment=glimpse_table2" in command:
        run_dir = _only(ws, "logs/glimpse_table2/runs/*")
        assert list(OmegaConf.load(run_dir / "config.yaml").tags) == ["table2"]
    elif "experiment=glimpse_ablation" in command:
        sweep = _only(ws, "logs/glimpse_ablation/multiruns/*")
        jobs = [p for p in sweep.iterdir() if p.name.isdigit()]
        rows = []  # one job per conf/ablation row, under the experiment's own task and tags
        for job in jobs:
            cfg = OmegaConf.load(job / "config.yaml")
            assert cfg.task_name == "glimpse_ablation" and list(cfg.tags) == ["table3"]
            assert [r["method"] for r in load_rows(job)] == ["glimpse"]
            overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
            rows += [o.split("=", 1)[1] for o in overrides if o.startswith("ablation=")]
            if "ablation=last_30pct" in overrides:  # the row's setting reached the method
                assert cfg.method.glimpse.layers == 0.3
        assert sorted(rows) == sorted(p.stem for p in (ROOT / "conf" / "ablation").glob("*.yaml"))
    elif "tau_depth=0.1,0.2,0.5" in command:
        sweep = _only(ws, "logs/train_free_eval/multiruns/*")
        jobs = [p for p in sweep.iterdir() if p.name.isdigit()]
        assert len(jobs) == 27 and all(load_rows(j) for j in jobs)
    elif "train_free_eval.py" in command:
        assert "| method |" in out


@pytest.mark.parametrize("block", PYTHON_BLOCKS)
def test_readme_python_block(workspace, block):
    if why := _skip_reason(block):
        pytest.skip(why)
    prelude = "".join(v for k, v in PRELUDES.items() if k in block)
    epilogue = "".join(v for k, v in EPILOGUES.items() if k in block)
    script = prelude + _substitute(block) + epilogue
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=workspace,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert done.returncode == 0, f"{script}\n{done.stderr[-3000:]}"


def test_add_a_method_example_computes_what_it_says():
    """The README's gradient norm, checked against the same quantity computed by hand."""
    code = _substitute(next(b for b in _blocks("python") if "class GradientNorm" in b))
    if "gradient_norm" not in xattr.methods.available():
        exec(compile(code, "README:add-a-method", "exec"), {})
    g = torch.Generator().manual_seed(0)
    n, layers, heads = 9, 2, 2
    mask = torch.ones(n, n).tril().bool()
    attn = torch.softmax(
        torch.randn(layers, heads, n, n, generator=g).masked_fill(~mask, -torch.inf), -1
    )
    grads = torch.randn(2, layers, heads, n, n, generator=g)
    trace = xattr.Trace.from_tensors(
        list(attn), grads, visual_index=[1, 2, 3, 4], prompt_index=[5, 6],
        answer_positions=[7, 8], grid=(2, 2), tokens=[f"w{i}" for i in range(n)],
    )  # fmt: skip
    expl = xattr.methods.get("gradient_norm").explain(trace)
    # by hand: the norm over heads of the last layer's gradient row p_t at V, averaged over
    # tokens, on each token's causal block (entries past p_t are outside it)
    rows = []
    for t, p in enumerate([6, 7]):
        block = grads[t, -1, :, : p + 1, : p + 1].norm(dim=0)  # [p+1, p+1]
        rows.append(block[p, [1, 2, 3, 4]])
    torch.testing.assert_close(expl.visual, torch.stack(rows).mean(0).view(2, 2))
    assert expl.method == "gradient_norm" and expl.hparams["layer"] == -1
    assert json.dumps(expl.hparams)  # the hyper-parameters are plain data (logged per row)
