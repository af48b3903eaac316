// SegNext demo page: prompts from the mouse, masks from the local dinoseg server.
"use strict";

const MASK_RGBA = [30, 144, 255, 128];  // overlay colour where the mask is 1
const DRAG_PIXELS = 4;                   // a press that moves farther is a drag (box / scribble)

const state = {
  session: null, width: 0, height: 0,
  interactions: [],   // {type: "click", y, x, positive} | {type: "box", box} | {type: "scribble", points, positive}
  busy: false, lastLatencyMs: null, embedMs: null, requests: 0, error: null,
};
const el = (id) => document.getElementById(id);
const imageCanvas = el("image"), overlay = el("overlay"), promptCanvas = el("prompts");

function setStatus(text) { el("status").textContent = text; }

async function postJSON(url, payload) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                              body: JSON.stringify(payload)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  el("model").textContent = `${info.model}, ${info.image_size}px model frame`;
  el("random-banner").hidden = !info.random_init;
}

async function openImage(file) {
  state.busy = true;
  setStatus("Embedding the image...");
  const bytes = await file.arrayBuffer();
  const r = await fetch("/api/image", {method: "POST", body: bytes});
  const data = await r.json();
  if (!r.ok) { state.busy = false; state.error = data.error; setStatus("Error: " + data.error); return; }
  const bitmap = await createImageBitmap(new Blob([bytes]));
  for (const c of [imageCanvas, overlay, promptCanvas]) { c.width = data.width; c.height = data.height; }
  imageCanvas.getContext("2d").drawImage(bitmap, 0, 0);
  Object.assign(state, {session: data.session, width: data.width, height: data.height, interactions: [],
                        embedMs: data.embed_ms, lastLatencyMs: null, busy: false, error: null});
  clearOverlay();
  drawPrompts();
  el("undo").disabled = el("reset").disabled = false;
  setStatus(`Image ${data.width}x${data.height} embedded in ${data.embed_ms.toFixed(1)} ms. Click on an object.`);
}

function clearOverlay() { overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height); }

async function showMask(pngBase64) {
  const blob = await (await fetch("data:image/png;base64," + pngBase64)).blob();
  const bitmap = await createImageBitmap(blob);
  const tmp = new OffscreenCanvas(state.width, state.height).getContext("2d");
  tmp.drawImage(bitmap, 0, 0);
  const src = tmp.getImageData(0, 0, state.width, state.height).data;
  const ctx = overlay.getContext("2d");
  const out = ctx.createImageData(state.width, state.height);
  for (let i = 0; i < src.length; i += 4) {
    if (src[i] > 127) { out.data.set(MASK_RGBA, i); }
  }
  ctx.putImageData(out, 0, 0);
}

function promptsPayload() {
  const clicks = [], scribbles = [];
  let box = null;
  for (const it of state.interactions) {
    if (it.type === "click") clicks.push([it.y, it.x, it.positive]);
    else if (it.type === "box") box = it.box;
    else scribbles.push({points: it.points, positive: it.positive});
  }
  return {session: state.session, clicks, box, scribbles};
}

async function send(url, payload) {
  state.busy = true;
  state.requests += 1;
  try {
    const data = await postJSON(url, payload);
    await showMask(data.mask_png);
    if (data.latency_ms !== null) state.lastLatencyMs = data.latency_ms;
    const latency = data.latency_ms === null ? "" : `last prediction ${data.latency_ms.toFixed(1)} ms, `;
    setStatus(`${latency}${state.interactions.length} interaction(s), mask area ${data.area} px ` +
              `(image embedding ${state.embedMs.toFixed(1)} ms)`);
    state.error = null;
  } catch (e) {
    state.error = String(e.message || e);
    setStatus("Error: " + state.error);
  } finally {
    state.busy = false;
  }
}

function addInteraction(it) {
  if (!state.session || state.busy) return;
  state.interactions.push(it);
  drawPrompts();
  send("/api/interact", promptsPayload());
}

function drawPrompts(preview) {
  const ctx = promptCanvas.getContext("2d");
  ctx.clearRect(0, 0, promptCanvas.width, promptCanvas.height);
  const r = Math.max(3, Math.round(Math.max(state.width, state.height) / 150));
  const colour = (positive) => positive ? "#2e7d32" : "#c62828";
  const items = preview ? state.interactions.concat([preview]) : state.interactions;
  for (const it of items) {
    ctx.lineWidth = Math.max(2, r / 2);
    if (it.type === "click") {
      ctx.fillStyle = colour(it.positive);
      ctx.beginPath(); ctx.arc(it.x + 0.5, it.y + 0.5, r, 0, 2 * Math.PI); ctx.fill();
      ctx.strokeStyle = "white"; ctx.stroke();
    } else if (it.type === "box") {
      const [x0, y0, x1, y1] = it.box;
      ctx.strokeStyle = "#f9a825";
      ctx.strokeRect(Math.min(x0, x1), Math.min(y0, y1), Math.abs(x1 - x0), Math.abs(y1 - y0));
    } else {
      ctx.strokeStyle = colour(it.positive);
      ctx.beginPath();
      it.points.forEach(([y, x], i) => i ? ctx.lineTo(x, y) : ctx.moveTo(x, y));
      ctx.stroke();
    }
  }
}

function toImage(event) {
  const rect = promptCanvas.getBoundingClientRect();
  const x = Math.floor((event.clientX - rect.left) * state.width / rect.width);
  const y = Math.floor((event.clientY - rect.top) * state.height / rect.height);
  return [Math.min(Math.max(y, 0), state.height - 1), Math.min(Math.max(x, 0), state.width - 1)];
}

let press = null;  // {y, x, button, shift, dragging, points}
promptCanvas.addEventListener("contextmenu", (e) => e.preventDefault());
promptCanvas.addEventListener("mousedown", (e) => {
  if (!state.session) return;
  const [y, x] = toImage(e);
  press = {y, x, button: e.button, shift: e.shiftKey, dragging: false, points: [[y, x]]};
  e.preventDefault();
});
promptCanvas.addEventListener("mousemove", (e) => {
  if (!press) return;
  const [y, x] = toImage(e);
  if (!press.dragging && Math.hypot(y - press.y, x - press.x) >= DRAG_PIXELS) press.dragging = true;
  if (!press.dragging) return;
  if (press.shift) {
    press.points.push([y, x]);
    drawPrompts({type: "scribble", points: press.points, positive: press.button === 0});
  } else {
    drawPrompts({type: "box", box: [press.x, press.y, x, y]});
  }
});
window.addEventListener("mouseup", (e) => {
  if (!press) return;
  const p = press;
  press = null;
  const [y, x] = toImage(e);
  if (!p.dragging) {
    addInteraction({type: "click", y: p.y, x: p.x, positive: p.button === 0});
  } else if (p.shift) {
    p.points.push([y, x]);
    addInteraction({type: "scribble", points: p.points, positive: p.button === 0});
  } else {
    addInteraction({type: "box", box: [Math.min(p.x, x), Math.min(p.y, y), Math.max(p.x, x), Math.max(p.y, y)]});
  }
});

el("file").addEventListener("change", (e) => { if (e.target.files.length) openImage(e.target.files[0]); });
el("undo").addEventListener("click", () => {
  if (!state.session || state.busy || !state.interactions.length) return;
  state.interactions.pop();
  drawPrompts();
  send("/api/undo", {session: state.session});
});
el("reset").addEventListener("click", () => {
  if (!state.session || state.busy) return;
  state.interactions = [];
  drawPrompts();
  send("/api/reset", {session: state.session});
});

// Read-only hooks for tests and scripting: the state and the mask as the page shows it.
window.segnextDemo = {
  state,
  readMask() {  // base64 of H*W bytes, 1 where the overlay is painted
    const data = overlay.getContext("2d").getImageData(0, 0, state.width, state.height).data;
    const bytes = new Uint8Array(state.width * state.height);
    for (let i = 0; i < bytes.length; i++) bytes[i] = data[4 * i + 3] > 0 ? 1 : 0;
    let s = "";
    for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    return btoa(s);
  },
};
loadInfo();
