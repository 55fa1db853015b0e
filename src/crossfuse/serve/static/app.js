// crossfuse's page: a form built from GET /v1/model, predictions as bars, search hits as a grid.
// No build step and nothing from a CDN: it works where the server does.
"use strict";
const $ = (id) => document.getElementById(id);
const KEY = "crossfuse-api-key";
let model = null;

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { "Authorization": "Bearer " + key } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try {
      const body = await res.json();
      msg = body.error + (body.field ? " (field " + body.field + ")" : "");
    } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showError(target, err) {
  target.replaceChildren(el("div", { class: "error", role: "alert" }, err.message || String(err)));
}

const recorded = {};  // field name -> a WAV blob recorded in the page

function wav(buffer) {
  // mono 16-bit PCM WAV of an AudioBuffer (soundfile reads it; a browser's own recording format may not be)
  const data = buffer.getChannelData(0);
  const out = new DataView(new ArrayBuffer(44 + data.length * 2));
  const text = (o, t) => { for (let i = 0; i < t.length; i++) out.setUint8(o + i, t.charCodeAt(i)); };
  text(0, "RIFF"); out.setUint32(4, 36 + data.length * 2, true); text(8, "WAVEfmt ");
  out.setUint32(16, 16, true); out.setUint16(20, 1, true); out.setUint16(22, 1, true);
  out.setUint32(24, buffer.sampleRate, true); out.setUint32(28, buffer.sampleRate * 2, true);
  out.setUint16(32, 2, true); out.setUint16(34, 16, true); text(36, "data"); out.setUint32(40, data.length * 2, true);
  for (let i = 0; i < data.length; i++) out.setInt16(44 + i * 2, Math.max(-1, Math.min(1, data[i])) * 0x7fff, true);
  return new Blob([out], { type: "audio/wav" });
}

function recorder(field) {
  const button = el("button", { type: "button", id: "record-" + field.name }, "Record");
  const status = el("span", { class: "muted", id: "recorded-" + field.name });
  let rec = null;
  button.addEventListener("click", async () => {
    if (rec) { rec.stop(); return; }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      status.textContent = "no microphone: " + err.message;
      return;
    }
    const chunks = [];
    rec = new MediaRecorder(stream);
    rec.ondataavailable = (e) => chunks.push(e.data);
    rec.onstop = async () => {
      stream.getTracks().forEach((t) => t.stop());
      rec = null;
      button.textContent = "Record";
      const ctx = new AudioContext();
      const audio = await ctx.decodeAudioData(await new Blob(chunks).arrayBuffer());
      recorded[field.name] = wav(audio);
      status.textContent = "recorded " + audio.duration.toFixed(1) + " s";
    };
    rec.start();
    button.textContent = "Stop";
    status.textContent = "recording…";
  });
  return [button, status];
}

function inputFor(field) {
  const id = "field-" + field.name;
  if (field.type === "file") {
    const input = el("input", { id, name: field.name, type: "file", accept: (field.accept || []).join(",") });
    if (field.kind !== "audio" || !window.MediaRecorder) return input;
    input.addEventListener("change", () => { delete recorded[field.name]; });
    return el("span", { class: "row" }, input, ...recorder(field));
  }
  if (field.type === "category") {
    const select = el("select", { id, name: field.name }, el("option", { value: "" }, "(left out)"));
    for (const v of field.values) select.append(el("option", { value: v }, v));
    return select;
  }
  if (field.type === "number") {
    return el("input", { id, name: field.name, type: "number", step: "any",
                         placeholder: field.median !== undefined ? "e.g. " + (+field.median.toFixed(3)) : "" });
  }
  return el("textarea", { id, name: field.name, placeholder: "text" });
}

function buildForm() {
  const form = $("predict-form");
  form.replaceChildren();
  for (const m of model.modalities) {
    form.append(el("div", { class: "group" }, m.name === m.kind ? m.name : m.name + " · " + m.kind));
    for (const f of m.fields) {
      form.append(el("label", { for: "field-" + f.name }, f.name), inputFor(f));
    }
  }
}

function bars(values, top) {
  const grid = el("div", { class: "bars" });
  const entries = Object.entries(values).filter(([, v]) => v !== null);
  entries.sort((a, b) => b[1] - a[1]);
  for (const [name, v] of entries) {
    const bar = el("div", { class: "bar" + (name === top ? " top" : "") });
    bar.style.width = Math.max(0, Math.min(1, v)) * 100 + "%";
    grid.append(el("span", {}, name), el("div", {}, bar), el("span", { class: "num" }, v.toFixed(3)));
  }
  return grid;
}

async function predict() {
  const out = $("predict-result");
  const button = $("predict-button");
  const body = new FormData();
  for (const node of $("predict-form").querySelectorAll("input, select, textarea")) {
    if (node.type === "file") {
      if (node.files.length) body.append(node.name, node.files[0]);
      else if (recorded[node.name]) body.append(node.name, recorded[node.name], node.name + ".wav");
    } else if (node.value.trim() !== "") {
      body.append(node.name, node.value);
    }
  }
  button.disabled = true;
  try {
    const res = await api("/v1/predict", { method: "POST", body });
    const p = (await res.json()).predictions[0];
    const parts = [];
    if (p.label !== null && p.label !== undefined) {
      parts.push(el("div", { class: "label", id: "predicted-label" }, p.label));
      parts.push(el("h3", {}, "Class probabilities"), bars(p.probabilities, p.label));
    } else {
      parts.push(el("div", { class: "label", id: "predicted-label" }, (+p.value.toFixed(4)).toString()));
    }
    const absent = Object.entries(p.present).filter(([, v]) => !v).map(([m]) => m);
    if (absent.length) parts.push(el("p", { class: "muted" }, "left out: " + absent.join(", ")));
    if (p.weights) parts.push(el("h3", {}, "Weight of each modality"), bars(p.weights));
    if (p.trust) {
      const shown = Object.fromEntries(Object.entries(p.trust).filter(([, v]) => v !== null));
      if (Object.keys(shown).length) parts.push(el("h3", {}, "Trust (1: typical of the training data)"), bars(shown));
    }
    out.replaceChildren(...parts);
  } catch (err) {
    showError(out, err);
  } finally {
    button.disabled = false;
  }
}

async function thumbnail(url) {
  const res = await api(url);
  return URL.createObjectURL(await res.blob());
}

async function search() {
  const out = $("search-result");
  const body = new FormData();
  body.append("index", $("search-index").value);
  body.append("top", $("search-top").value || "8");
  const file = $("search-file").files[0];
  if (file) body.append("file", file); else body.append("query", $("search-query").value);
  $("search-button").disabled = true;
  try {
    const res = await api("/v1/search", { method: "POST", body });
    const data = await res.json();
    const grid = el("div", { class: "grid", id: "hits" });
    for (const h of data.results) {
      const card = el("div", { class: "hit" });
      if (h.thumbnail) {
        const img = el("img", { alt: h.value });
        card.append(img);
        thumbnail(h.thumbnail).then((src) => { img.src = src; }).catch(() => {});
      }
      card.append(el("div", { class: "score" }, "#" + h.rank + "  " + h.score.toFixed(3)),
                  el("div", { class: "value" }, h.value));
      grid.append(card);
    }
    out.replaceChildren(el("p", { class: "muted" }, data.results.length + " hits in " + data.index +
                                  " for a " + data.modality + " query"), grid);
  } catch (err) {
    showError(out, err);
  } finally {
    $("search-button").disabled = false;
  }
}

function showTab(name) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.tab === name);
  $("panel-predict").classList.toggle("hidden", name !== "predict");
  $("panel-search").classList.toggle("hidden", name !== "search");
}

async function loadModel() {
  try {
    model = await (await api("/v1/model")).json();
  } catch (err) {
    $("model-line").textContent = "cannot load the model: " + err.message;
    return;
  }
  const classes = model.classes.length ? " · classes " + model.classes.join(", ") : "";
  $("model-line").textContent = model.task + " · fusion " + (model.fusion || "none") + " · " +
    model.modalities.map((m) => m.name).join(" + ") + classes;
  buildForm();
  $("predict-button").disabled = model.kind !== "fusion";
  const select = $("search-index");
  select.replaceChildren(...model.indexes.map((ix) =>
    el("option", { value: ix.name }, ix.name + " (" + ix.count + " " + ix.modality + " items)")));
  $("tab-search").hidden = !model.indexes.length;
  if (model.kind !== "fusion") showTab("search");
}

window.addEventListener("DOMContentLoaded", () => {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY) || "";
  key.addEventListener("change", () => { sessionStorage.setItem(KEY, key.value.trim()); loadModel(); });
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showTab(t.dataset.tab));
  $("predict-button").addEventListener("click", (e) => { e.preventDefault(); predict(); });
  $("search-button").addEventListener("click", (e) => { e.preventDefault(); search(); });
  $("search-query").addEventListener("keydown", (e) => { if (e.key === "Enter") search(); });
  loadModel();
});
