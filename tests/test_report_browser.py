"""Report pages in a real headless Chromium (Debian's package, driven by Playwright).

Skipped only when no Chromium binary exists. The screenshot is kept under pytest's tmp
folder (printed with -s); set XATTR_SCREENSHOT_TO=docs/report.png to copy it there.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xattr
from support.compose import compose_run
from xattr.data.synthetic import generate_synthetic
from xattr.pipeline import run
from xattr.report import build_run_report, write_report
from xattr.report.data import colormap_data

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="no Chromium binary (apt-get install -y chromium)"
)
ANSWER = "the triangle is blue."


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium with a fresh profile for the module; pages record their troubles."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1200, "height": 760},
        )
        yield context
        context.close()


def _open(browser, path: Path):
    """Open a local file; returns the page and the list its console errors, page errors and
    requests to anything but the file itself go into."""
    page = browser.new_page()
    page.set_default_timeout(15_000)
    troubles: list[str] = []
    page.on("console", lambda m: troubles.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)  # fmt: skip
    page.on("pageerror", lambda e: troubles.append(f"page error: {e}"))
    page.on("request", lambda r: troubles.append(f"request: {r.url[:80]}")
            if not r.url.startswith(("file://", "data:")) else None)  # fmt: skip
    page.goto(path.resolve().as_uri())
    return page, troubles


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    """report.html of the shipped toy for four methods on a teacher-forced five-token answer."""
    sample = next(s for s in generate_synthetic(8, seed=3) if "triangle" in s.question)
    image = sample.load_image()
    adapter = xattr.models.load(xattr.toy.checkpoint("qwen2_5_vl"))
    both = {"return_token_maps": True, "return_layer_maps": True}
    spec = {"glimpse": both, "tmme": both, "rollout": {"return_token_maps": True}, "dexar": {}}
    expls = xattr.explain(adapter, image, sample.question, method=spec, answer=ANSWER)
    path = write_report(tmp_path_factory.mktemp("report") / "report.html", expls, image,
                        sample.question, model="toy_qwen2_5_vl")  # fmt: skip
    return path, expls


def _canvas(page) -> str:
    return page.evaluate("document.getElementById('heat').toDataURL()")


def _pixels(page) -> np.ndarray:
    """The map canvas as an [H, W, 4] array (its PNG, decoded here)."""
    png = base64.b64decode(_canvas(page).split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def test_report_loads_cleanly_and_clicking_a_token_shows_its_own_map(browser, toy_report):
    path, expls = toy_report
    page, troubles = _open(browser, path)
    page.wait_for_selector("body[data-ready='1']")
    heat = page.locator("#heat")
    assert heat.get_attribute("data-view") == "glimpse/holistic/"
    holistic = _canvas(page)
    tokens = page.locator("#answer .token")
    assert tokens.count() == len(expls["glimpse"].answer_tokens) == 5
    assert page.locator("#references-box").is_hidden()  # xattr.explain had no reference

    tokens.nth(1).click()
    assert heat.get_attribute("data-view") == "glimpse/token/1"
    first = _canvas(page)
    assert first != holistic
    assert "token “triangle”" in page.inner_text("#caption")
    # the canvas shows THIS token's map: at the centre of its peak and lowest cells the page's
    # colour is the jet colour of 1 and of 0 (cells are 448 / 7 = 64 px, bilinear = the value)
    own = expls["glimpse"].token_maps[1].numpy()
    lut = np.frombuffer(base64.b64decode(colormap_data()), dtype=np.uint8).reshape(256, 3)
    shown = _pixels(page)
    assert shown.shape == (448, 448, 4)
    for flat, level in ((own.argmax(), 255), (own.argmin(), 0)):
        row, col = divmod(int(flat), own.shape[1])
        got = shown[row * 64 + 32, col * 64 + 32, :3].astype(int)
        assert np.abs(got - lut[level]).max() <= 3, (got, lut[level])

    # another token: the one whose normalised map differs most from the first one's (two
    # tokens with the same pattern draw the same picture)
    maps = expls["glimpse"].token_maps.flatten(1).numpy()
    norm = (maps - maps.min(1, keepdims=True)) / np.ptp(maps, axis=1, keepdims=True)
    other = max(
        (k for k in range(len(norm)) if k != 1), key=lambda k: np.abs(norm[k] - norm[1]).max()
    )
    tokens.nth(other).click()
    assert _canvas(page) not in (first, holistic)
    page.click("#holistic")
    assert heat.get_attribute("data-view") == "glimpse/holistic/" and _canvas(page) == holistic
    assert troubles == []


def test_methods_opacity_layers_and_plots(browser, toy_report, tmp_path):
    path, expls = toy_report
    page, troubles = _open(browser, path)
    page.wait_for_selector("body[data-ready='1']")
    # GLIMPSE: one bar per layer, one cell per (layer, head), one thumbnail per layer
    layers, heads = np.shape(expls["glimpse"].meta["head_weights"])[1:]
    assert page.locator("#layer-plot rect").count() == layers
    assert page.locator("#head-plot rect").count() == layers * heads
    assert page.locator("#layers .thumb").count() == len(expls["glimpse"].layer_maps)
    page.locator("#layers .thumb").nth(0).click()
    assert page.locator("#heat").get_attribute("data-view") == "glimpse/layer/0"
    assert "layer 0" in page.inner_text("#caption")
    # the question's words carry GLIMPSE's prompt saliency as their background
    assert page.locator("#question .word").count() == len(expls["glimpse"].prompt_tokens)
    assert "rgba" in page.locator("#question .word").nth(0).evaluate("e => e.style.background")

    page.locator("#opacity").fill("80")
    assert page.locator("#heat").evaluate("e => e.style.opacity") == "0.8"
    assert page.inner_text("#opacity-value") == "80%"

    glimpse = _canvas(page)
    page.click("button[data-method='tmme']")
    assert page.locator("#heat").get_attribute("data-view").startswith("tmme/")
    assert _canvas(page) != glimpse and page.locator("#heads-box").is_hidden()
    page.click("button[data-method='rollout']")
    assert page.locator("#weights-box").is_hidden()  # rollout keeps no layer maps
    page.click("button[data-method='dexar']")
    assert "gives no prompt saliency" in page.inner_text("#question-note")
    page.click("button[data-method='glimpse']")
    page.locator("#opacity").fill("55")
    page.locator("#answer .token").nth(3).click()  # "blue": the word that answers

    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as img:
        assert img.width >= 1000 and np.asarray(img.convert("L")).std() > 20  # not blank
    print(f"\nreport screenshot: {shot}")
    if target := os.environ.get("XATTR_SCREENSHOT_TO"):
        shutil.copy(shot, target)
    assert troubles == []


def test_run_index_filters_and_links_to_sample_pages(browser, tmp_path, tiny_model_dir):
    cfg = compose_run(tmp_path, tiny_model_dir("qwen2_5_vl"), "method=[glimpse,rollout]",
                      "metrics=agreement", "save_explanations=true", samples=3)  # fmt: skip
    run(cfg)
    index = build_run_report(tmp_path / "run", progress=False)
    page, troubles = _open(browser, index)
    rows = page.locator("#samples tbody tr")
    assert rows.count() == 3
    first_id = rows.nth(0).locator("td").nth(0).inner_text()
    page.locator("#filter").fill(first_id)
    visible = [rows.nth(i).is_visible() for i in range(3)]
    assert visible.count(True) >= 1 and visible[0]
    page.locator("#filter").fill("")
    rows.nth(0).locator("a").click()
    page.wait_for_selector("body[data-ready='1']")
    assert page.url.endswith(".html") and "/samples/" in page.url
    assert page.locator("#methods button").count() == 2
    # what the scores were computed against: the human map and the mask, shown on the image
    refs = page.locator("#references .thumb")
    assert refs.count() == 2 and page.locator("#references-box").is_visible()
    holistic = _canvas(page)
    refs.nth(1).click()
    assert page.locator("#heat").get_attribute("data-view") == "reference/1"
    assert "object mask (what the scores were computed against)" in page.inner_text("#caption")
    assert _canvas(page) != holistic
    page.click("button[data-method='rollout']")
    assert page.locator("#heat").get_attribute("data-view") == "rollout/holistic/"
    page.locator("nav.pager a", has_text="index").click()
    page.wait_for_selector("#samples")
    assert troubles == []


# Renders the characters on a canvas in the page's font: real glyphs differ from each other,
# while a missing font draws every character as the same box (what the CI page showed before
# it installed a CJK font).
GLYPHS_JS = """chars => {
  const font = getComputedStyle(document.body).fontFamily;
  return chars.map(ch => {
    const c = document.createElement('canvas'); c.width = c.height = 40;
    const g = c.getContext('2d'); g.font = '32px ' + font; g.fillText(ch, 2, 32);
    return c.toDataURL();
  });
}"""


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("这是什么颜色？", "红色的圆，直径约3厘米。"),
        ("De quelle couleur est le cercle ?", "Rouge, légèrement orangé."),
    ],
)
def test_a_chinese_and_an_accented_report_show_their_text(browser, tmp_path, question, answer):
    from support.real_tokenizers import family_tokenizer
    from xattr.toy.build import build_tiny_model

    model = build_tiny_model(
        "qwen2_5_vl", tmp_path / "model", with_tokenizer=family_tokenizer("qwen2_5_vl")
    )
    adapter = xattr.models.load(model)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (112, 112, 3), np.uint8))
    expls = xattr.explain(adapter, image, question, method={"glimpse": {"return_token_maps": True}},
                          answer=answer)  # fmt: skip
    path = write_report(tmp_path / "report.html", expls, image, question, model="real tokenizer")
    page, troubles = _open(browser, path)
    page.wait_for_selector("body[data-ready='1']")
    assert page.title() == question
    shown = page.eval_on_selector_all(  # a word start is drawn as a gap before its token
        "#answer .token",
        "bs => bs.map(b => (b.classList.contains('spaced') ? ' ' : '') + b.textContent)",
    )
    assert "".join(shown) == answer  # each token its text, joined: the answer
    assert "".join(page.locator("#question .word").all_text_contents()).replace(" ", "") == (
        question.replace(" ", "")
    )
    body = page.inner_text("body")
    assert question in body and not any(mark in body for mark in ("Ġ", "▁", "Ċ", "\ufffd"))
    if "红" in answer:  # real glyphs: 红, 绿 and 圆 each drawn differently
        assert len(set(page.evaluate(GLYPHS_JS, ["红", "绿", "圆"]))) == 3
    else:
        assert len(set(page.evaluate(GLYPHS_JS, ["é", "è", "e"]))) == 3
    assert troubles == []


def test_sentences_are_listed_and_clicking_one_shows_its_map(browser, tmp_path):
    sample = next(s for s in generate_synthetic(8, seed=3) if "triangle" in s.question)
    image = sample.load_image()
    adapter = xattr.models.load(xattr.toy.checkpoint("qwen2_5_vl"))
    answer = "the triangle is blue. the circle is red."
    expls = xattr.explain(adapter, image, sample.question, method=["glimpse"], answer=answer,
                          target="sentences", visual_dependence=True)  # fmt: skip
    path = write_report(tmp_path / "report.html", expls, image, sample.question, model="toy")
    page, troubles = _open(browser, path)
    page.wait_for_selector("body[data-ready='1']")
    spans = page.locator("#spans .span")
    assert spans.all_text_contents() == ["the triangle is blue .", "the circle is red ."]
    holistic = _canvas(page)
    spans.nth(1).click()
    assert page.locator("#heat").get_attribute("data-view") == "glimpse/span/1"
    assert "“the circle is red .” (its own map)" in page.inner_text("#caption")
    assert _canvas(page) != holistic
    assert "image effect" in page.locator("#answer .token").nth(3).get_attribute("title")
    assert troubles == []


def test_a_thinking_section_is_folded_away_and_opens_on_a_click(browser, tmp_path):
    from xattr import Explanation

    texts = ["<think>", "\n", "It", " is", " red", ".", "\n", "</think>", "\n\n", "Red", "."]
    expl = Explanation(method="glimpse", visual=torch.rand(3, 3), answer_tokens=texts,
                       token_relevance=torch.rand(len(texts)))  # fmt: skip
    image = Image.new("RGB", (48, 48), (90, 90, 90))
    path = write_report(tmp_path / "report.html", {"glimpse": expl}, image, "What colour?")
    page, troubles = _open(browser, path)
    page.wait_for_selector("body[data-ready='1']")
    fold = page.locator("#answer details.thinking")
    assert fold.locator("summary").inner_text() == "thinking (8 tokens)"
    assert fold.locator(".token").count() == 8
    assert not fold.locator(".token").nth(2).is_visible()  # closed: the reasoning is hidden
    assert page.locator("#answer > .token").all_text_contents()[-2:] == ["Red", "."]
    fold.locator("summary").click()
    assert fold.locator(".token").nth(2).is_visible()
    assert troubles == []


def test_two_images_each_show_the_map_and_their_share(browser, tmp_path):
    """A prompt of two images: a canvas over each, its share of the relevance under it; a
    token or a layer shows its own map on both images; the method buttons change the shares."""
    samples = generate_synthetic(8, seed=3)
    images = [samples[0].load_image(), samples[1].load_image().resize((96, 64))]
    adapter = xattr.models.load(xattr.toy.checkpoint("qwen2_5_vl"))
    both = {"return_token_maps": True, "return_layer_maps": True}
    expls = xattr.explain(adapter, images, "Which image shows a circle?",
                          method={"glimpse": both, "rollout": {}}, answer="the second one")  # fmt: skip
    path = write_report(tmp_path / "two.html", expls, images, "Which image shows a circle?")
    page, troubles = _open(browser, path)
    page.wait_for_selector("body[data-ready='1']")
    heats = page.locator(".stage canvas")
    assert heats.count() == 2
    assert [heats.nth(k).get_attribute("width") for k in (0, 1)] == ["448", "384"]  # 4x 96

    def shares() -> list[str]:
        return [page.inner_text(f"#share-{k}") for k in (0, 1)]

    def expected(name: str) -> list[str]:
        return [f"image {k + 1} — {100 * s:.0f}% of the relevance"
                for k, s in enumerate(expls[name].image_shares.tolist())]  # fmt: skip

    assert shares() == expected("glimpse")
    holistic = [page.evaluate(f"document.querySelectorAll('.stage canvas')[{k}].toDataURL()")
                for k in (0, 1)]  # fmt: skip
    page.locator("#answer .token").nth(2).click()
    assert [heats.nth(k).get_attribute("data-view") for k in (0, 1)] == ["glimpse/token/2"] * 2
    token = [page.evaluate(f"document.querySelectorAll('.stage canvas')[{k}].toDataURL()")
             for k in (0, 1)]  # fmt: skip
    assert token[0] != holistic[0] and token[1] != holistic[1]
    page.locator("#layers .thumb").first.click()
    assert heats.nth(1).get_attribute("data-view") == "glimpse/layer/0"
    page.click("#methods button[data-method='rollout']")
    assert shares() == expected("rollout")
    assert heats.nth(1).get_attribute("data-view") == "rollout/holistic/"
    assert troubles == []


def test_a_video_shows_its_frames_and_plays_through_them(browser, tmp_path):
    """A video's page: one canvas per frame captioned "frame k — share", the frame pair's map
    on both of its frames; play steps a highlight from frame to frame, pause stops it."""
    from xattr.data.synthetic_video import generate_synthetic_videos

    sample = generate_synthetic_videos(1, seed=2, frames=4)[0]
    adapter = xattr.models.load(xattr.toy.checkpoint("qwen2_5_vl"))
    expl = xattr.explain(adapter, sample.image, sample.question, method="glimpse", answer="red")
    frames = sample.load_images()
    path = write_report(tmp_path / "video.html", {"glimpse": expl}, frames, sample.question)
    page, troubles = _open(browser, path)
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator(".stage canvas").count() == 4
    shares = expl.frame_shares.tolist()
    assert [page.inner_text(f"#share-{k}") for k in range(4)] == [
        f"frame {k + 1} — {100 * s:.0f}% of the relevance" for k, s in enumerate(shares)
    ]
    drawn = [page.evaluate(f"document.querySelectorAll('.stage canvas')[{k}].toDataURL()")
             for k in range(4)]  # fmt: skip
    assert drawn[0] == drawn[1] and drawn[2] == drawn[3] and drawn[0] != drawn[2]  # pairs
    page.click("#play")
    page.wait_for_function("document.getElementById('images').dataset.current === '1'")
    assert page.locator("#images figure.current").count() == 1
    page.click("#play")  # pause
    stopped = page.get_attribute("#images", "data-current")
    page.wait_for_timeout(900)
    assert page.get_attribute("#images", "data-current") == stopped
    assert troubles == []
