// xattr report: draws the maps, tokens, words and plots of the page's JSON data. No network.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("xattr-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const lut = Uint8Array.from(atob(data.colormap), (c) => c.charCodeAt(0));
  const state = { method: 0, kind: "holistic", index: 0 };
  const $ = (id) => document.getElementById(id);
  const canvases = Array.from(document.querySelectorAll(".stage canvas")); // one per image
  const dims = data.images || [data.image];

  function el(tag, attrs, text) {
    const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(x) {
    if (x === null || x === undefined || !Number.isFinite(x)) return "n/a";
    const a = Math.abs(x);
    return a !== 0 && (a < 1e-3 || a >= 1e4) ? x.toExponential(2) : x.toFixed(a < 1 ? 4 : 3);
  }

  // a map (uint8 values, base64) coloured with the lookup table onto a canvas of its own size
  function mapCanvas(map) {
    const bytes = Uint8Array.from(atob(map.data), (c) => c.charCodeAt(0));
    const small = document.createElement("canvas");
    small.width = map.w;
    small.height = map.h;
    const ctx = small.getContext("2d");
    const img = ctx.createImageData(map.w, map.h);
    for (let i = 0; i < bytes.length; i++) {
      const v = bytes[i] * 3;
      img.data[4 * i] = lut[v];
      img.data[4 * i + 1] = lut[v + 1];
      img.data[4 * i + 2] = lut[v + 2];
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return small;
  }

  function paint(canvas, map) {
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = true; // bilinear upsampling of the map onto the image
    ctx.imageSmoothingQuality = "low";
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (map) ctx.drawImage(mapCanvas(map), 0, 0, canvas.width, canvas.height);
  }

  function method() { return data.methods[state.method]; }

  // falls back to the holistic map when the chosen view is not there (another method's)
  function checkView() {
    const m = method();
    const refs = data.references || [];
    const ok = (state.kind === "reference" && refs[state.index])
      || (state.kind === "token" && m.tokens[state.index] && m.tokens[state.index].map)
      || (state.kind === "layer" && m.layers[state.index])
      || (state.kind === "span" && (m.spans || [])[state.index]);
    if (!ok) state.kind = "holistic";
  }

  // the current view's map on image k (null where that image has none, e.g. a reference);
  // image 0's maps are the views' own fields, image k's (k >= 1) lie in m.images[k]
  function viewMap(k) {
    const m = method();
    if (state.kind === "reference") {
      const r = data.references[state.index];
      return r.images ? r.images[k] : r.map;
    }
    if (state.kind === "holistic") return k === 0 ? m.map : m.images[k].map;
    const key = { token: "tokens", span: "spans", layer: "layers" }[state.kind];
    return k === 0 ? m[key][state.index].map : m.images[k][key][state.index];
  }

  function describe() {
    const m = method();
    if (state.kind === "reference") return `reference · ${data.references[state.index].name} (what the scores were computed against)`;
    if (state.kind === "token") return `${m.name} · token “${m.tokens[state.index].text.trim()}” (its own map)`;
    if (state.kind === "span") return `${m.name} · “${m.spans[state.index].text.trim()}” (its own map)`;
    if (state.kind === "layer") {
      const l = m.layers[state.index];
      return `${m.name} · layer ${l.layer} (${(100 * l.share).toFixed(1)}% of the map)`;
    }
    return `${m.name} · holistic map`;
  }

  function drawMap() {
    checkView();
    const maps = canvases.map((_, k) => viewMap(k));
    const view = state.kind === "reference" ? `reference/${state.index}` : `${method().name}/${state.kind}/${state.kind === "holistic" ? "" : state.index}`;
    canvases.forEach((c, k) => { paint(c, maps[k]); c.dataset.view = view; });
    const map = maps.find((x) => x); // several images share one range
    $("caption").textContent = `${describe()} · values ${fmt(map.lo)} … ${fmt(map.hi)}`;
    drawShares();
  }

  // several images: each one's share of the method's positive relevance, under it
  function drawShares() {
    const m = method();
    if (!m.images) return;
    m.images.forEach((im, k) => {
      const box = $(`share-${k}`);
      const share = im.share === null ? "no positive relevance" : `${(100 * im.share).toFixed(0)}% of the relevance`;
      const picture = data.picture || "image";
      box.textContent = `${picture} ${k + 1} — ${share}`;
      box.title = `${m.name}: this ${picture}'s share of the holistic map's positive relevance`;
      box.dataset.share = im.share === null ? "" : String(im.share);
    });
  }

  // a video's frames: play steps a highlight through them, one frame every 600 ms
  function setupPlay() {
    const button = $("play");
    if (!button) return;
    const figures = Array.from(document.querySelectorAll("#images figure"));
    let timer = null;
    let current = -1;
    const show = (k) => {
      current = k;
      figures.forEach((f, i) => f.classList.toggle("current", i === k));
      $("images").dataset.current = String(k);
    };
    button.addEventListener("click", () => {
      if (timer) {
        clearInterval(timer);
        timer = null;
        button.textContent = "▶ play";
        $("images").classList.remove("playing");
        return;
      }
      $("images").classList.add("playing");
      button.textContent = "❚❚ pause";
      show((current + 1) % figures.length);
      timer = setInterval(() => show((current + 1) % figures.length), 600);
    });
  }

  function shade(level) { return `rgba(255, 96, 0, ${(0.08 + 0.8 * level).toFixed(3)})`; }

  function drawMethods() {
    const box = $("methods");
    box.replaceChildren();
    data.methods.forEach((m, i) => {
      const b = el("button", { type: "button", "data-method": m.name, class: i === state.method ? "active" : "" }, m.name);
      b.addEventListener("click", () => { state.method = i; if (state.kind === "reference") state.kind = "holistic"; render(); });
      box.appendChild(b);
    });
  }

  function drawWords() {
    const m = method();
    const box = $("question");
    box.replaceChildren();
    if (!m.words.length) { box.textContent = data.question; return; }
    const known = m.words.some((w) => w.saliency !== null);
    m.words.forEach((w) => {
      const span = el("span", { class: "word", title: known ? `saliency ${fmt(w.saliency)} · tokens ${w.tokens.join(" ")}` : "no prompt saliency from this method" }, w.text);
      if (known) span.style.background = shade(w.level);
      box.appendChild(span);
      box.appendChild(document.createTextNode(" "));
    });
    $("question-note").textContent = known ? `coloured by ${m.name}'s prompt saliency` : `${m.name} gives no prompt saliency`;
  }

  // a thinking model's <think> … </think> tokens: [first, last] indices, or null
  function thinking(tokens) {
    const open = tokens.findIndex((t) => t.text.includes("<think>"));
    const close = tokens.findIndex((t) => t.text.includes("</think>"));
    if (close < 0) return null;
    return [open >= 0 && open < close ? open : 0, close];
  }

  function drawTokens() {
    const m = method();
    const box = $("answer");
    box.replaceChildren();
    const think = thinking(m.tokens);
    let fold = null; // the collapsible thinking section, while its tokens are added
    if (think) {
      fold = el("details", { class: "thinking" });
      fold.appendChild(el("summary", {}, `thinking (${think[1] - think[0] + 1} tokens)`));
    }
    m.tokens.forEach((t, i) => {
      const effect = t.dependence == null ? "" : ` · image effect ${fmt(t.dependence)} nats (log p with the image − blurred)`;
      const attrs = { type: "button", class: "token", "data-token": String(i), title: `relevance ${fmt(t.relevance)}${effect}${t.kept ? "" : " · left out of the aggregate"}${t.map ? " · click: this token's map" : ""}` };
      const b = el("button", attrs, t.text.trim() || t.text);
      if (/^\s/.test(t.text) && i > 0) b.classList.add("spaced"); // a word start, not a piece
      if (!t.kept) b.classList.add("dropped");
      if (!t.text) { b.classList.add("piece"); b.title += " · part of a character the next token completes"; }
      if (state.kind === "token" && state.index === i) b.classList.add("active");
      if (!t.map) b.disabled = true;
      b.style.background = shade(t.level);
      b.addEventListener("click", () => { state.kind = "token"; state.index = i; render(); });
      if (think && i >= think[0] && i <= think[1]) {
        fold.appendChild(b);
        if (i === think[1]) box.appendChild(fold);
      } else {
        box.appendChild(b);
      }
    });
    const spans = $("spans");
    spans.replaceChildren();
    spans.hidden = !(m.spans || []).length;
    (m.spans || []).forEach((s, i) => {
      const b = el("button", { type: "button", class: "span", "data-span": String(i), title: `relevance ${fmt(s.relevance)} · click: this part's map` }, s.text.trim());
      if (state.kind === "span" && state.index === i) b.classList.add("active");
      b.style.background = shade(s.level);
      b.addEventListener("click", () => { state.kind = "span"; state.index = i; render(); });
      spans.appendChild(b);
    });
    const back = $("holistic");
    back.disabled = state.kind === "holistic";
    $("answer-note").textContent = m.tokens.some((t) => t.map) ? "click a token for its own map" : `${m.name} kept no per-token maps`;
  }

  function drawLayers() {
    const m = method();
    const strip = $("layers");
    strip.replaceChildren();
    $("layers-box").hidden = !m.layers.length;
    m.layers.forEach((l, i) => {
      const b = el("button", { type: "button", class: "thumb", "data-layer": String(l.layer), title: `layer ${l.layer}: ${(100 * l.share).toFixed(1)}% of the map` });
      const c = el("canvas", { width: "64", height: "64" });
      paint(c, l.map);
      b.appendChild(c);
      b.appendChild(el("div", {}, `L${l.layer} · ${(100 * l.share).toFixed(0)}%`));
      if (state.kind === "layer" && state.index === i) b.classList.add("active");
      b.addEventListener("click", () => { state.kind = "layer"; state.index = i; render(); });
      strip.appendChild(b);
    });
  }

  // the maps the sample's scores were computed against (human attention map, object mask)
  function drawReferences() {
    const refs = data.references || [];
    const strip = $("references");
    strip.replaceChildren();
    $("references-box").hidden = !refs.length;
    refs.forEach((r, i) => {
      const b = el("button", { type: "button", class: "thumb", "data-reference": r.name, title: `show the ${r.name} on the image` });
      const c = el("canvas", { width: "64", height: "64" });
      paint(c, r.map);
      b.appendChild(c);
      b.appendChild(el("div", {}, r.name));
      if (state.kind === "reference" && state.index === i) b.classList.add("active");
      b.addEventListener("click", () => { state.kind = "reference"; state.index = i; render(); });
      strip.appendChild(b);
    });
  }

  // the selected token's weights, or the mean over the tokens that entered the aggregate
  function tokenWeights(rows) {
    const m = method();
    if (state.kind === "token" && rows[state.index]) return { values: rows[state.index], label: `token “${m.tokens[state.index].text.trim()}”` };
    const keep = m.tokens.map((t, i) => (t.kept ? i : -1)).filter((i) => i >= 0 && i < rows.length);
    const use = keep.length ? keep : rows.map((_, i) => i);
    const mean = (arrays) => (Array.isArray(arrays[0]) ? arrays[0].map((_, j) => mean(arrays.map((a) => a[j]))) : arrays.reduce((s, x) => s + x, 0) / arrays.length);
    const label = use.length > 1 ? `mean over ${use.length} tokens` : `token “${m.tokens[use[0]].text.trim()}”`;
    return { values: mean(use.map((i) => rows[i])), label };
  }

  function barPlot(svg, labels, bars, dots, caption) {
    const W = 360, H = 130, pad = { l: 34, r: 8, t: 8, b: 30 };
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.replaceChildren();
    const top = Math.max(1e-12, ...bars, ...(dots || []));
    const n = bars.length, slot = (W - pad.l - pad.r) / n, y = (v) => pad.t + (H - pad.t - pad.b) * (1 - v / top);
    svg.appendChild(el("svg:line", { x1: pad.l, x2: W - pad.r, y1: y(0), y2: y(0), stroke: "#98a2b3" }));
    svg.appendChild(el("svg:text", { x: 2, y: pad.t + 8 }, fmt(top)));
    svg.appendChild(el("svg:text", { x: 2, y: y(0) }, "0"));
    bars.forEach((v, i) => {
      const x = pad.l + i * slot;
      const r = el("svg:rect", { x: x + slot * 0.15, width: slot * 0.7, y: y(Math.max(0, v)), height: Math.max(0, y(0) - y(Math.max(0, v))), fill: "#2456d6", "data-value": String(v) });
      r.appendChild(el("svg:title", {}, `layer ${labels[i]}: ${fmt(v)}`));
      svg.appendChild(r);
      if (n <= 40 || i % Math.ceil(n / 20) === 0) svg.appendChild(el("svg:text", { x: x + slot / 2, y: H - pad.b + 12, "text-anchor": "middle" }, String(labels[i])));
      if (dots) svg.appendChild(el("svg:circle", { cx: x + slot / 2, cy: y(dots[i]), r: 2.6, fill: "#e8590c" }));
    });
    svg.appendChild(el("svg:text", { x: pad.l, y: H - 4 }, caption));
  }

  function heatPlot(svg, rows, layers, caption) {
    const heads = rows[0].length, cell = Math.max(4, Math.min(18, Math.floor(300 / heads)));
    const rowH = Math.max(3, Math.min(14, Math.floor(220 / rows.length)));
    const W = Math.max(360, 40 + heads * cell + 8), H = 10 + rows.length * rowH + 30;
    const flat = rows.flat(), lo = Math.min(...flat), hi = Math.max(...flat), span = hi - lo || 1;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", H);
    svg.replaceChildren();
    rows.forEach((row, r) => {
      row.forEach((v, h) => {
        const k = Math.round((255 * (v - lo)) / span) * 3;
        const rect = el("svg:rect", { x: 40 + h * cell, y: 6 + r * rowH, width: cell - 1, height: rowH - 1, fill: `rgb(${lut[k]},${lut[k + 1]},${lut[k + 2]})` });
        rect.appendChild(el("svg:title", {}, `layer ${layers[r]}, head ${h}: ${fmt(v)}`));
        svg.appendChild(rect);
      });
      if (rows.length <= 16 || r % Math.ceil(rows.length / 12) === 0) svg.appendChild(el("svg:text", { x: 2, y: 6 + r * rowH + rowH - 2 }, `L${layers[r]}`));
    });
    svg.appendChild(el("svg:text", { x: 40, y: H - 14 }, `heads 0…${heads - 1}; colour: ${fmt(lo)} (blue) … ${fmt(hi)} (red)`));
    svg.appendChild(el("svg:text", { x: 40, y: H - 2 }, caption));
  }

  function drawPlots() {
    const m = method();
    const w = m.weights;
    $("weights-box").hidden = !w && !m.layers.length;
    $("heads-box").hidden = !w;
    if (w) {
      const lw = tokenWeights(w.layer_weights);
      barPlot($("layer-plot"), w.layers, lw.values, w.depth_prior, `layer weights λ, ${lw.label}; dots: depth prior`);
      const hw = tokenWeights(w.head_weights);
      heatPlot($("head-plot"), hw.values, w.layers, `head weights, ${hw.label}`);
    } else if (m.layers.length) {
      barPlot($("layer-plot"), m.layers.map((l) => l.layer), m.layers.map((l) => l.share), null, "each layer's share of the map");
    }
  }

  function drawWarnings() {
    const list = $("warnings");
    list.replaceChildren();
    method().warnings.forEach((w) => list.appendChild(el("li", {}, w)));
  }

  function render() {
    drawMethods();
    drawMap();
    drawReferences();
    drawWords();
    drawTokens();
    drawLayers();
    drawPlots();
    drawWarnings();
  }

  function setup() {
    canvases.forEach((heat, k) => {
      const image = dims[k];
      const scale = Math.max(1, Math.floor(448 / Math.max(image.width, image.height)));
      const w = image.width * scale, h = image.height * scale;
      heat.parentElement.style.width = `${w}px`;
      heat.parentElement.style.height = `${h}px`;
      heat.width = w;
      heat.height = h;
    });
    const opacity = $("opacity");
    const apply = () => { canvases.forEach((heat) => { heat.style.opacity = String(opacity.value / 100); }); $("opacity-value").textContent = `${opacity.value}%`; };
    opacity.addEventListener("input", apply);
    apply();
    $("holistic").addEventListener("click", () => { state.kind = "holistic"; render(); });
    setupPlay();
    render();
    document.body.dataset.ready = "1";
  }

  setup();
})();
