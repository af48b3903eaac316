// DINOv demo page: example images with painted masks in, the instances of those categories on the target
// images out, from the local dinoseg server (dinoseg/demo/dinov/server.py documents the API).
"use strict";

const DEBOUNCE_MS = 250;                 // edits closer together than this make one request
const MASK_RGBA = [255, 64, 129, 120];   // the painted example mask
const OVERLAY_ALPHA = 130;               // target overlays

const state = {
  info: null,
  examples: [],  // {image: {id, name, width, height} | null, category, mask: Uint8Array (H*W, 0/1), maskPng, node}
  targets: [],   // {image: {id, name, width, height}, instances: [...], masks: [Uint8Array], node}
  tool: "brush", brushSize: 12, threshold: 0.3,
  requests: 0, completed: 0, scheduled: false, busy: false, pending: false, error: null, warnings: [], last: null,
  ready: false,
};
const el = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------- helpers

function color(i) {  // the colour of instance i: golden-ratio hues, as dinoseg.predict.color
  const h = (i * 0.6180339887498949) % 1.0, s = 0.75, v = 0.95;
  const k = Math.floor(h * 6), f = h * 6 - k, p = v * (1 - s), q = v * (1 - f * s), t = v * (1 - (1 - f) * s);
  const rgb = [[v, t, p], [q, v, p], [p, v, t], [p, q, v], [t, p, v], [v, p, q]][k % 6];
  return rgb.map((c) => Math.floor(c * 255));
}

function setStatus(text) { el("status").textContent = text; }

function showMessages(lines, isError) {
  const list = el("messages");
  list.textContent = "";
  for (const line of lines) {
    const li = document.createElement("li");
    li.textContent = line;
    if (isError) li.className = "error";
    list.appendChild(li);
  }
}

function fail(message) {
  state.error = message;
  showMessages([message], true);
  setStatus("Error: " + message);
}

async function postJSON(url, payload) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                              body: JSON.stringify(payload)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function uploadImage(file) {  // -> {id, name, width, height}; throws with the server's message
  const r = await fetch("/api/image?name=" + encodeURIComponent(file.name), {method: "POST",
                                                                             body: await file.arrayBuffer()});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function loadBitmap(imageId) {
  const r = await fetch(`/api/images/${imageId}.png`);
  if (!r.ok) throw new Error((await r.json()).error || r.statusText);
  return createImageBitmap(await r.blob());
}

async function decodeMask(pngBase64, width, height) {  // -> Uint8Array (H*W) of 0/1
  const blob = await (await fetch("data:image/png;base64," + pngBase64)).blob();
  const bitmap = await createImageBitmap(blob);
  const ctx = new OffscreenCanvas(width, height).getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const mask = new Uint8Array(width * height);
  for (let i = 0; i < mask.length; i++) mask[i] = rgba[4 * i] > 127 ? 1 : 0;
  return mask;
}

function encodeMask(mask, width, height) {  // Uint8Array (H*W) -> base64 PNG, white = object on opaque black
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(width, height);
  for (let i = 0; i < mask.length; i++) {
    const v = mask[i] ? 255 : 0;
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v;
    img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas.toDataURL("image/png").split(",")[1];
}

function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  return btoa(s);
}

// ---------------------------------------------------------------------------------------------- examples

function addExample() {
  const max = state.info ? state.info.max_examples : 4;
  if (state.examples.length >= max) return null;
  const node = el("example-template").content.firstElementChild.cloneNode(true);
  const previous = state.examples[state.examples.length - 1];
  const ex = {image: null, category: previous ? previous.category : "object", mask: null, maskPng: null, node};
  const q = (sel) => node.querySelector(sel);
  q(".category").value = ex.category;
  q(".category").placeholder = "object";
  q(".category").addEventListener("input", (e) => { ex.category = e.target.value; schedule(); });
  q(".file").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (!file) return;
    try {
      await setExampleImage(ex, await uploadImage(file));
    } catch (err) { fail(String(err.message || err)); }
  });
  q(".library").addEventListener("change", async (e) => {
    const entry = e.target.value;
    e.target.value = "";
    if (!entry) return;
    try {
      await setExampleImage(ex, await postJSON("/api/library", {kind: "examples", entry}));
    } catch (err) { fail(String(err.message || err)); }
  });
  q(".clear").addEventListener("click", () => {
    if (!ex.mask) return;
    ex.mask.fill(0); ex.maskPng = null;
    renderMask(ex);
    schedule();
  });
  q(".remove").addEventListener("click", () => {
    state.examples = state.examples.filter((x) => x !== ex);
    node.remove();
    if (!state.examples.length) addExample();
    updateButtons();
    schedule();
  });
  const maskCanvas = q("canvas.mask");
  maskCanvas.addEventListener("contextmenu", (e) => e.preventDefault());
  maskCanvas.addEventListener("mousedown", (e) => startStroke(ex, e));
  fillLibrary(q(".library"), "examples");
  state.examples.push(ex);
  el("examples").appendChild(node);
  updateButtons();
  return ex;
}

async function setExampleImage(ex, data) {
  const bitmap = await loadBitmap(data.id);
  const w = data.width, h = data.height;
  for (const c of ex.node.querySelectorAll("canvas")) { c.width = w; c.height = h; }
  ex.node.querySelector("canvas.image").getContext("2d").drawImage(bitmap, 0, 0);
  ex.image = {id: data.id, name: data.name, width: w, height: h};
  ex.mask = data.mask_png ? await decodeMask(data.mask_png, w, h) : new Uint8Array(w * h);
  ex.maskPng = null;
  if (data.category) { ex.category = data.category; ex.node.querySelector(".category").value = data.category; }
  ex.node.querySelector(".note").textContent = data.mask_png ? "" : "Paint over the object.";
  state.error = null;
  renderMask(ex);
  schedule();
}

function renderMask(ex) {
  const {width: w, height: h} = ex.image;
  const ctx = ex.node.querySelector("canvas.mask").getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < ex.mask.length; i++) if (ex.mask[i]) img.data.set(MASK_RGBA, 4 * i);
  ctx.putImageData(img, 0, 0);
}

function stamp(ex, cx, cy, r, value) {  // a disk of radius r (image pixels) centred at (cx, cy)
  const {width: w, height: h} = ex.image;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(w - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(h - 1, Math.ceil(cy + r));
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx, dy = y + 0.5 - cy;
      if (dx * dx + dy * dy <= r * r) ex.mask[y * w + x] = value;
    }
  }
}

let stroke = null;  // {ex, value, r, last: [x, y]}

function imagePoint(ex, event) {  // mouse -> (x, y) in image pixels (floats)
  const rect = ex.node.querySelector("canvas.mask").getBoundingClientRect();
  return [(event.clientX - rect.left) * ex.image.width / rect.width,
          (event.clientY - rect.top) * ex.image.height / rect.height];
}

function startStroke(ex, event) {
  if (!ex.image) return;
  event.preventDefault();
  const rect = ex.node.querySelector("canvas.mask").getBoundingClientRect();
  const erase = event.button === 2 || state.tool === "eraser";
  const r = Math.max(0.75, state.brushSize / 2 * ex.image.width / rect.width);
  const [x, y] = imagePoint(ex, event);
  stroke = {ex, value: erase ? 0 : 1, r, last: [x, y]};
  stamp(ex, x, y, r, stroke.value);
  renderMask(ex);
}

window.addEventListener("mousemove", (event) => {
  if (!stroke) return;
  const [x, y] = imagePoint(stroke.ex, event);
  const [lx, ly] = stroke.last;
  const steps = Math.max(1, Math.ceil(Math.hypot(x - lx, y - ly) / Math.max(0.5, stroke.r / 2)));
  for (let i = 1; i <= steps; i++) stamp(stroke.ex, lx + (x - lx) * i / steps, ly + (y - ly) * i / steps, stroke.r,
                                         stroke.value);
  stroke.last = [x, y];
  renderMask(stroke.ex);
});

window.addEventListener("mouseup", () => {
  if (!stroke) return;
  stroke.ex.maskPng = null;
  stroke = null;
  schedule();
});

// ---------------------------------------------------------------------------------------------- targets

async function addTarget(data) {
  const max = state.info ? state.info.max_targets : 4;
  if (state.targets.length >= max) { fail(`at most ${max} target images`); return; }
  const bitmap = await loadBitmap(data.id);
  const node = el("target-template").content.firstElementChild.cloneNode(true);
  for (const c of node.querySelectorAll("canvas")) { c.width = data.width; c.height = data.height; }
  node.querySelector("canvas.image").getContext("2d").drawImage(bitmap, 0, 0);
  node.querySelector(".name").textContent = `${data.name} (${data.width}x${data.height})`;
  const t = {image: {id: data.id, name: data.name, width: data.width, height: data.height}, instances: [],
             masks: [], node};
  node.querySelector(".remove").addEventListener("click", () => {
    state.targets = state.targets.filter((x) => x !== t);
    node.remove();
    updateButtons();
    schedule();
  });
  state.targets.push(t);
  el("targets").appendChild(node);
  state.error = null;
  updateButtons();
  schedule();
}

function shown(t) {  // indices of the instances at or above the threshold, lowest score first (drawn below)
  return t.instances.map((_, i) => i).filter((i) => t.instances[i].score >= state.threshold)
    .sort((a, b) => t.instances[a].score - t.instances[b].score);
}

function renderTarget(t) {
  const {width: w, height: h} = t.image;
  const overlay = t.node.querySelector("canvas.overlay").getContext("2d");
  const img = overlay.createImageData(w, h);
  const labels = t.node.querySelector("canvas.labels").getContext("2d");
  labels.clearRect(0, 0, w, h);
  const order = shown(t);
  for (const i of order) {
    const rgba = [...color(i), OVERLAY_ALPHA];
    const mask = t.masks[i];
    for (let p = 0; p < mask.length; p++) if (mask[p]) img.data.set(rgba, 4 * p);
  }
  overlay.putImageData(img, 0, 0);
  labels.font = `${Math.max(10, Math.round(Math.max(w, h) / 40))}px sans-serif`;
  labels.textBaseline = "top";
  for (const i of order) {
    const it = t.instances[i];
    const [x0, y0, x1, y1] = it.box;
    const [r, g, b] = color(i);
    labels.strokeStyle = `rgb(${r},${g},${b})`;
    labels.lineWidth = Math.max(1, Math.round(Math.max(w, h) / 300));
    labels.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const text = `${it.category} ${it.score.toFixed(2)}`;
    const tw = labels.measureText(text).width, th = parseInt(labels.font, 10) + 2;
    labels.fillStyle = "rgba(0,0,0,0.7)";
    labels.fillRect(x0, y0, tw + 4, th);
    labels.fillStyle = `rgb(${r},${g},${b})`;
    labels.fillText(text, x0 + 2, y0 + 1);
  }
  const list = t.node.querySelector(".instances");
  list.textContent = "";
  for (const i of order.slice().reverse()) {
    const it = t.instances[i];
    const li = document.createElement("li");
    const [r, g, b] = color(i);
    li.innerHTML = `<span class="swatch" style="background: rgb(${r},${g},${b})"></span>`;
    li.appendChild(document.createTextNode(`${it.category} ${it.score.toFixed(3)} (${it.area} px)`));
    list.appendChild(li);
  }
  if (!order.length) {
    const li = document.createElement("li");
    li.className = "none";
    li.textContent = t.instances.length ? `no instance scores ${state.threshold.toFixed(2)} or more` :
      "no instance";
    list.appendChild(li);
  }
}

// ---------------------------------------------------------------------------------------------- requests

function payload() {  // {examples, targets} of the current page, and the example slots they come from
  const slots = state.examples.filter((ex) => ex.image);
  const examples = slots.map((ex) => {
    if (ex.maskPng === null) ex.maskPng = encodeMask(ex.mask, ex.image.width, ex.image.height);
    return {image: ex.image.id, category: ex.category.trim() || "object", mask_png: ex.maskPng};
  });
  return {body: {examples, targets: state.targets.map((t) => t.image.id)}, slots, targets: state.targets.slice()};
}

let timer = null;
function schedule() {
  clearTimeout(timer);
  state.scheduled = true;
  timer = setTimeout(runSegment, DEBOUNCE_MS);
}

async function runSegment() {
  state.scheduled = false;
  if (state.busy) { state.pending = true; return; }
  const {body, slots, targets} = payload();
  if (!body.examples.length) {
    for (const t of targets) { t.instances = []; t.masks = []; renderTarget(t); }
    state.warnings = ["add an example image and paint the object on it"];
    showMessages(state.warnings, false);
    setStatus("Add an example image, paint the object on it, then add target images.");
    state.completed += 1;
    updateButtons();
    return;
  }
  state.busy = true;
  state.requests += 1;
  setStatus("Segmenting...");
  try {
    const data = await postJSON("/api/segment", body);
    data.examples.forEach((report, i) => {
      const note = slots[i].node.querySelector(".note");
      note.textContent = report.status === "ok" ? `${report.area} px painted${report.cached ? " (cached)" : ""}` :
        report.status === "empty" ? "The mask is empty: paint over the object." :
        "The mask vanishes at the model's input size: paint a larger area.";
      note.classList.toggle("warning", report.status !== "ok");
    });
    for (let i = 0; i < targets.length; i++) {
      const reply = data.targets[i];
      targets[i].instances = reply.instances;
      targets[i].masks = await Promise.all(reply.instances.map(
        (it) => decodeMask(it.mask_png, targets[i].image.width, targets[i].image.height)));
      targets[i].decodeMs = reply.decode_ms;
      renderTarget(targets[i]);
    }
    state.last = data;
    state.warnings = data.warnings;
    state.error = null;
    showMessages(data.warnings, false);
    const cats = data.categories.length ? data.categories.join(", ") : "none";
    const decoded = data.targets.map((t) => t.decode_ms).filter((v) => v !== null);
    setStatus(`categories: ${cats} · encoding ${data.encode_ms.toFixed(1)} ms · decoder ` +
              (decoded.length ? `${Math.max(...decoded).toFixed(1)} ms per target` : "cached") +
              ` · model calls so far: ${data.stats.encoded} example encodings, ${data.stats.features} target ` +
              `feature maps, ${data.stats.decoded} decodings`);
  } catch (e) {
    fail(String(e.message || e));
  } finally {
    state.busy = false;
    state.completed += 1;
    updateButtons();
    if (state.pending) { state.pending = false; runSegment(); }
  }
}

async function exportResults(format) {
  const {body} = payload();
  const r = await fetch("/api/export", {method: "POST", headers: {"Content-Type": "application/json"},
                                        body: JSON.stringify({...body, score_threshold: state.threshold, format})});
  if (!r.ok) { fail((await r.json()).error || r.statusText); return; }
  const a = document.createElement("a");
  a.href = URL.createObjectURL(await r.blob());
  a.download = format === "coco" ? "dinov_results.json" : "dinov_masks.zip";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

function updateButtons() {
  const max = state.info ? state.info.max_examples : 4;
  el("add-example").disabled = state.examples.length >= max;
  const ready = state.targets.length > 0 && state.examples.some((ex) => ex.image);
  el("download-png").disabled = el("download-coco").disabled = el("save").disabled = !ready;
}

function fillLibrary(select, kind) {
  const entries = state.info ? state.info.library[kind] : [];
  select.hidden = !entries.length;
  for (const entry of entries) {
    const option = document.createElement("option");
    option.value = entry.id;
    option.textContent = entry.label;
    select.appendChild(option);
  }
}

// ---------------------------------------------------------------------------------------------- wiring

for (const button of document.querySelectorAll("button.tool")) {
  button.addEventListener("click", () => {
    state.tool = button.dataset.tool;
    for (const b of document.querySelectorAll("button.tool")) b.classList.toggle("active", b === button);
  });
}
el("brush-size").addEventListener("input", (e) => {
  state.brushSize = Number(e.target.value);
  el("brush-size-value").textContent = e.target.value;
});
el("threshold").addEventListener("input", (e) => {
  state.threshold = Number(e.target.value);
  el("threshold-value").textContent = state.threshold.toFixed(2);
  for (const t of state.targets) renderTarget(t);
});
el("add-example").addEventListener("click", () => addExample());
el("target-file").addEventListener("change", async (e) => {
  const files = Array.from(e.target.files);
  e.target.value = "";
  for (const file of files) {
    try {
      await addTarget(await uploadImage(file));
    } catch (err) { fail(String(err.message || err)); }
  }
});
el("input-library").addEventListener("change", async (e) => {
  const entry = e.target.value;
  e.target.value = "";
  if (!entry) return;
  try {
    await addTarget(await postJSON("/api/library", {kind: "inputs", entry}));
  } catch (err) { fail(String(err.message || err)); }
});
el("download-png").addEventListener("click", () => exportResults("png"));
el("download-coco").addEventListener("click", () => exportResults("coco"));
el("save").addEventListener("click", async () => {
  try {
    const data = await postJSON("/api/save", {...payload().body, score_threshold: state.threshold});
    showMessages([`saved to ${data.path}`], false);
  } catch (err) { fail(String(err.message || err)); }
});

async function start() {
  state.info = await (await fetch("/api/info")).json();
  const size = state.info.input_size;
  el("model").textContent = `${state.info.model}, model input: shortest edge ${size[0]}, longest at most ${size[1]}`;
  el("random-banner").hidden = !state.info.random_init;
  el("save").hidden = !state.info.output;
  if (state.info.output) el("save").title = `writes into a new folder under ${state.info.output}`;
  fillLibrary(el("input-library"), "inputs");
  el("brush-size-value").textContent = el("brush-size").value;
  el("threshold-value").textContent = state.threshold.toFixed(2);
  addExample();
  state.ready = true;
}

// Read-only hooks for tests and scripting.
window.dinovDemo = {
  state,
  exampleMask(i) { return toBase64(state.examples[i].mask); },  // H*W bytes, 1 = painted
  readTargetMask(i) {  // H*W bytes, 1 where the target's overlay is painted
    const t = state.targets[i];
    const data = t.node.querySelector("canvas.overlay").getContext("2d")
      .getImageData(0, 0, t.image.width, t.image.height).data;
    const bytes = new Uint8Array(t.image.width * t.image.height);
    for (let p = 0; p < bytes.length; p++) bytes[p] = data[4 * p + 3] > 0 ? 1 : 0;
    return toBase64(bytes);
  },
  shownInstances(i) { return shown(state.targets[i]).map((k) => state.targets[i].instances[k]); },
};
start();
