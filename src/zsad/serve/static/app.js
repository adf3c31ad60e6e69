// zsad serve — the page. Plain ES2020, no framework, no build step.
// Every string that comes from the server or from a file name is put into the page with textContent.
"use strict";

const TOKEN_KEY = "zsad.token";
const HIST_BINS = 20;
const PROFILE_REF_NOTE = "A profile is chosen: its own reference images are used, not these.";
const CSV_HEADER = ["file_name", "pred_score", "pred_label", "threshold", "threshold_source", "map_min", "map_max", "image_id"];

const state = {
  auth: false,
  methods: [],
  limits: { max_images: 32, max_upload_bytes: 64 * 1024 * 1024 },
  files: [],
  reference: null, // {reference_id, method, class_name (as sent), ...response}
  response: null, // last /v1/detect answer
  rows: [], // results sorted by score desc, each {result, row, card, labelCell, badge}
  threshold: { value: null, source: "none" },
  thresholdNote: "", // why the server made no decision (e.g. too few images for its rule)
  objectUrls: [], // blob URLs of the current results; revoked when results are replaced
  generation: 0, // bumped on every new result set so late image fetches of an old one are dropped
  station: { enabled: false, reason: "" }, // GET /v1/station
  profiles: [], // GET /v1/profiles summaries, by name
  view: "score", // "score" | "history"
};

const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// ---------- HTTP ----------

class ApiError extends Error {
  constructor(status, detail) {
    super(status ? `Error ${status}: ${detail}` : detail);
    this.status = status;
  }
}

function authHeaders() {
  const token = $("token").value.trim();
  return state.auth && token ? { Authorization: `Bearer ${token}` } : {};
}

async function readDetail(resp) {
  try {
    const body = await resp.json();
    const detail = body && body.detail;
    if (typeof detail === "string") return detail;
    // FastAPI's default validation errors are a list of {loc, msg}; keep the page useful if one slips through.
    if (Array.isArray(detail)) return detail.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
    if (detail !== undefined) return JSON.stringify(detail);
  } catch (_) {
    // not JSON (e.g. a proxy's HTML page): fall back to the status text
  }
  return resp.statusText || "request failed";
}

async function apiFetch(path, options = {}) {
  const headers = { ...authHeaders(), ...(options.headers || {}) };
  let resp;
  try {
    resp = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(0, `Network error: ${err.message}`);
  }
  if (!resp.ok) throw new ApiError(resp.status, await readDetail(resp));
  return resp;
}

const apiJson = async (path, options) => (await apiFetch(path, options)).json();

// <img src> cannot carry the Authorization header, so images are fetched and shown as blob URLs.
async function fetchObjectUrl(url) {
  const blob = await (await apiFetch(url)).blob();
  return URL.createObjectURL(blob);
}

async function downloadViaBlob(url, fileName) {
  clearError();
  try {
    const objectUrl = await fetchObjectUrl(url);
    saveObjectUrl(objectUrl, fileName);
  } catch (err) {
    showError(err);
  }
}

function saveObjectUrl(objectUrl, fileName) {
  const a = el("a", { href: objectUrl, download: fileName });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(objectUrl), 10000); // give the browser time to start the download
}

// ---------- status, errors, busy ----------

// Each view has its own message area, so an error is shown where the user is looking.
function showError(err) {
  const box = state.view === "history" ? $("history-error") : $("error");
  box.textContent = err instanceof Error ? err.message : String(err);
  box.hidden = false;
  box.scrollIntoView({ behavior: "smooth", block: "nearest" });
}

function clearError() {
  for (const id of ["error", "history-error"]) {
    $(id).hidden = true;
    $(id).textContent = "";
  }
}

let busy = false;
function setBusy(message) {
  busy = Boolean(message);
  for (const id of ["busy", "history-busy"]) {
    $(id).hidden = !busy;
    $(id).textContent = message || "";
  }
  document.body.classList.toggle("is-busy", busy);
  updateButtons();
}

function updateButtons() {
  const method = currentMethod();
  const profile = currentProfile();
  const usable = Boolean(profile || (method && method.available));
  $("score-btn").disabled = busy || !usable || state.files.length === 0;
  $("ref-btn").disabled = busy || Boolean(profile) || !usable || $("ref-input").files.length === 0;
  $("np-create").disabled = busy || state.methods.length === 0;
}

// ---------- health, token, methods ----------

async function loadHealth() {
  try {
    const health = await apiJson("/healthz");
    state.auth = Boolean(health.auth);
    $("server-info").textContent = `server ${health.status} · version ${health.version}`;
    $("token-row").hidden = !state.auth;
  } catch (err) {
    $("server-info").textContent = "server unreachable";
    showError(err);
  }
}

async function loadMethods() {
  clearError();
  try {
    const data = await apiJson("/v1/methods");
    state.methods = data.methods || [];
    if (data.limits) state.limits = { ...state.limits, ...data.limits };
    renderMethodOptions(data.default_method);
    renderProfileMethodOptions();
  } catch (err) {
    const select = $("method");
    select.replaceChildren(el("option", { text: "Methods not loaded" }));
    select.disabled = true;
    showError(err.status === 401 ? new ApiError(401, `${err.message.replace(/^Error 401: /, "")} — enter the access token above.`) : err);
  }
  onMethodChange();
}

function renderMethodOptions(defaultName) {
  const select = $("method");
  select.replaceChildren();
  for (const m of state.methods) {
    const option = el("option", { value: m.name, text: m.available ? m.name : `${m.name} (unavailable)` });
    option.disabled = !m.available;
    if (!m.available && m.unavailable_reason) option.title = m.unavailable_reason;
    select.append(option);
  }
  const fallback = state.methods.find((m) => m.available);
  const chosen = state.methods.find((m) => m.name === defaultName && m.available) || fallback;
  if (chosen) select.value = chosen.name;
  select.disabled = state.methods.length === 0;
}

function currentMethod() {
  return state.methods.find((m) => m.name === $("method").value) || null;
}

function onMethodChange() {
  const m = currentMethod();
  $("class-optional").hidden = !m || m.needs_class_name;
  $("class-name").required = Boolean(m && m.needs_class_name);
  $("method-doc").textContent = m ? describeMethod(m) : "";
  if (state.reference && (!m || state.reference.method !== m.name)) clearReference("method changed");
  updateRandomWarning();
  updateButtons();
}

function describeMethod(m) {
  const traits = [m.few_shot ? "few-shot capable" : "zero-shot", m.transductive ? "transductive (scores the set as a whole)" : null];
  const weights = `${m.backbone} / ${m.random_weights ? "RANDOM weights" : m.pretrained}, ${m.image_size}px`;
  return [m.doc, traits.filter(Boolean).join(", "), weights].filter(Boolean).join(" · ");
}

function updateRandomWarning() {
  const m = currentMethod();
  const random = Boolean((m && m.random_weights) || (state.response && state.response.random_weights));
  $("random-warning").hidden = !random;
}

// ---------- choosing images ----------

function isImage(file) {
  return file.type.startsWith("image/") || /\.(png|jpe?g|bmp|tiff?|webp|gif)$/i.test(file.name);
}

function addFiles(fileList) {
  const incoming = Array.from(fileList);
  const images = incoming.filter(isImage);
  const known = new Set(state.files.map((f) => `${f.name}|${f.size}`));
  for (const f of images) if (!known.has(`${f.name}|${f.size}`)) state.files.push(f);
  renderFileList();
  if (images.length < incoming.length) showError(`${incoming.length - images.length} file(s) ignored: not images.`);
}

function renderFileList() {
  const n = state.files.length;
  const total = state.files.reduce((sum, f) => sum + f.size, 0);
  $("file-count").textContent = n ? `${n} image${n === 1 ? "" : "s"} chosen (${formatBytes(total)}), at most ${state.limits.max_images} per request.` : "No images chosen.";
  $("file-count").classList.toggle("over-limit", n > state.limits.max_images);
  $("files-clear").hidden = n === 0;
  $("file-list").replaceChildren(...state.files.map((f) => el("li", { text: f.name })));
  updateButtons();
}

// Client-side check of the server's limits, so the user is told before a long upload is refused.
function checkLimits(files) {
  const { max_images: maxImages, max_upload_bytes: maxBytes } = state.limits;
  if (files.length > maxImages) return `Too many images: ${files.length} chosen, this server accepts at most ${maxImages} per request.`;
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (maxBytes && total > maxBytes) return `Upload too large: ${formatBytes(total)}, this server accepts at most ${formatBytes(maxBytes)} per request.`;
  return null;
}

function setupDropzone() {
  const zone = $("dropzone");
  const stop = (event) => {
    event.preventDefault();
    event.stopPropagation();
  };
  zone.addEventListener("dragenter", (e) => { stop(e); zone.classList.add("dragover"); });
  zone.addEventListener("dragover", (e) => { stop(e); zone.classList.add("dragover"); });
  zone.addEventListener("dragleave", (e) => { stop(e); zone.classList.remove("dragover"); });
  zone.addEventListener("drop", (e) => {
    stop(e);
    zone.classList.remove("dragover");
    clearError();
    addFiles(e.dataTransfer.files);
  });
  zone.addEventListener("keydown", (e) => {
    if (e.target === zone && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); $("file-input").click(); }
  });
  // A drop that misses the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
}

// ---------- requests ----------

function buildForm(files) {
  const form = new FormData();
  for (const f of files) form.append("images", f, f.name);
  const m = currentMethod();
  form.append("method", m.name);
  const className = $("class-name").value.trim();
  if (className) form.append("class_name", className);
  return form;
}

function classNameMissing() {
  const m = currentMethod();
  return m && m.needs_class_name && !$("class-name").value.trim();
}

async function scoreImages() {
  clearError();
  const profile = currentProfile();
  const problem = checkLimits(state.files) || (!profile && classNameMissing() ? "Please enter the object class (e.g. screw)." : null);
  if (problem) return showError(problem);
  let form;
  if (profile) { // the profile decides method, class, options, references and threshold
    form = new FormData();
    for (const f of state.files) form.append("images", f, f.name);
    form.append("profile", profile.name);
    form.append("source", "upload");
  } else {
    form = buildForm(state.files);
    if (state.reference) form.append("reference_id", state.reference.reference_id);
    if (state.station.enabled) form.append("source", "upload");
  }
  setBusy(`Scoring ${state.files.length} image(s)…`);
  try {
    renderResults(await apiJson("/v1/detect", { method: "POST", body: form }));
  } catch (err) {
    showError(err);
  } finally {
    setBusy(null);
  }
}

async function uploadReferences() {
  clearError();
  const files = Array.from($("ref-input").files);
  const problem = checkLimits(files) || (classNameMissing() ? "Please enter the object class before uploading references." : null);
  if (problem) return showError(problem);
  const form = buildForm(files);
  setBusy(`Uploading ${files.length} reference image(s)…`);
  try {
    const ref = await apiJson("/v1/references", { method: "POST", body: form });
    // Remember what was sent, so an edit of the class name can be detected (the server may normalise it).
    state.reference = { ...ref, method: currentMethod().name, sentClassName: $("class-name").value.trim() };
    renderReference();
  } catch (err) {
    showError(err);
  } finally {
    setBusy(null);
  }
}

function renderReference() {
  const ref = state.reference;
  $("ref-info").hidden = !ref;
  $("ref-note").hidden = true;
  if (!ref) return;
  $("ref-id").textContent = ref.reference_id;
  const thr = ref.threshold === null || ref.threshold === undefined ? "no threshold" : `threshold ${formatNumber(ref.threshold)}`;
  const shots = ref.k_shot ? `, ${ref.k_shot}-shot` : "";
  $("ref-detail").textContent = `${ref.num_images} image(s)${shots}, ${thr} (source: ${ref.threshold_source}). Next scores use it.`;
}

function clearReference(reason) {
  state.reference = null;
  renderReference();
  $("ref-input").value = "";
  updateButtons();
  if (reason) {
    $("ref-note").textContent = `Reference images no longer used (${reason}); upload them again for this method and class.`;
    $("ref-note").hidden = false;
  }
}

// ---------- results ----------

function renderResults(resp) {
  releaseObjectUrls();
  const generation = ++state.generation;
  state.response = resp;
  state.rows = [...resp.results].sort((a, b) => b.pred_score - a.pred_score).map((result) => ({ result }));
  const scores = state.rows.map((r) => r.result.pred_score);
  const thr = resp.threshold || { value: null, source: "none" };
  state.threshold = { value: isFiniteNumber(thr.value) ? thr.value : null, source: thr.source || "none" };
  state.thresholdNote = thr.note || "";

  $("results").hidden = false;
  $("transductive-note").hidden = !resp.transductive;
  const notes = [...(resp.notes || []), ...(resp.errors || []).map((e) => `${e.file_name}: not scored (${e.error})`)];
  $("set-notes").replaceChildren(...notes.map((n) => el("li", { text: n })));
  $("set-notes").hidden = notes.length === 0;
  const first = resp.results[0] || {};
  const profileName = resp.profile || first.profile;
  const revision = resp.revision !== undefined && resp.revision !== null ? resp.revision : first.revision;
  const refText = profileName
    ? `profile ${profileName}${revision !== undefined && revision !== null ? ` @ revision ${revision}` : ""}`
    : resp.reference_id ? `reference ${resp.reference_id}` : "no reference images";
  const tiled = resp.tiles ? ` · tiled ${resp.tiles.grid} (${resp.tiles.tile_size ? `${resp.tiles.tile_size} px` : "input-size"} tiles, score ${resp.tiles.score})` : "";
  $("results-meta").textContent = `${resp.method} · class "${resp.class_name}" · ${refText}${tiled} · ${scores.length} image(s) · request ${resp.request_id}`;
  updateRandomWarning();

  const [vmin, vmax] = resp.colour_range || [NaN, NaN];
  $("colour-min").textContent = formatNumber(vmin);
  $("colour-max").textContent = formatNumber(vmax);

  renderTable();
  renderOverlays(generation);
  setupSlider(scores);
  applyThreshold();
  $("results").scrollIntoView({ behavior: "smooth", block: "start" });
}

function renderTable() {
  const tbody = $("results-table").tBodies[0];
  tbody.replaceChildren();
  state.rows.forEach((entry, i) => {
    const r = entry.result;
    entry.labelCell = el("td", { className: "label" });
    entry.row = el("tr", { className: "result-row", tabindex: "0", title: "Show its overlay" }, [
      el("td", { className: "num", text: String(i + 1) }),
      el("td", { className: "file", text: r.file_name }),
      el("td", { className: "score num", text: formatNumber(r.pred_score) }),
      entry.labelCell,
      el("td", { className: "num", text: formatNumber(r.map_min) }),
      el("td", { className: "num", text: formatNumber(r.map_max) }),
    ]);
    const reveal = () => revealCard(entry);
    entry.row.addEventListener("click", reveal);
    entry.row.addEventListener("keydown", (e) => { if (e.key === "Enter") reveal(); });
    tbody.append(entry.row);
  });
}

function revealCard(entry) {
  entry.card.scrollIntoView({ behavior: "smooth", block: "center" });
  entry.card.classList.remove("flash");
  void entry.card.offsetWidth; // restart the highlight animation
  entry.card.classList.add("flash");
}

function renderOverlays(generation) {
  const grid = $("overlays");
  grid.replaceChildren();
  state.rows.forEach((entry, i) => {
    const r = entry.result;
    const img = el("img", { className: "overlay-img", alt: `Input and anomaly heatmap of ${r.file_name}` });
    entry.badge = el("span", { className: "badge" });
    const links = el("p", { className: "card-links" }, [
      downloadLink("map PNG (16-bit)", r.anomaly_map_url, `${stem(r.file_name)}_map.png`),
      downloadLink("map .npy", r.anomaly_map_npy_url, `${stem(r.file_name)}_map.npy`),
    ]);
    entry.card = el("figure", { className: "overlay-card" }, [
      el("div", { className: "img-frame" }, [img]),
      el("figcaption", {}, [
        el("span", { className: "file", text: `${i + 1}. ${r.file_name}` }),
        el("span", { className: "card-score" }, [el("span", { className: "card-score-value", text: formatNumber(r.pred_score) }), entry.badge]),
        links,
      ]),
    ]);
    grid.append(entry.card);
    loadImage(img, r.overlay_url, generation);
  });
}

async function loadImage(img, url, generation) {
  try {
    const objectUrl = await fetchObjectUrl(url);
    if (generation !== state.generation) return URL.revokeObjectURL(objectUrl); // results already replaced
    state.objectUrls.push(objectUrl);
    img.src = objectUrl;
  } catch (err) {
    if (generation !== state.generation) return;
    img.replaceWith(el("p", { className: "img-error", text: `Overlay not loaded: ${err.message}` }));
  }
}

function downloadLink(text, url, fileName) {
  const a = el("a", { href: "#", text });
  a.addEventListener("click", (e) => {
    e.preventDefault();
    downloadViaBlob(url, fileName);
  });
  return a;
}

function releaseObjectUrls() {
  for (const url of state.objectUrls) URL.revokeObjectURL(url);
  state.objectUrls = [];
}

// ---------- threshold slider, labels, histogram ----------

function setupSlider(scores) {
  const slider = $("threshold");
  let lo = scores.length ? Math.min(...scores) : 0;
  let hi = scores.length ? Math.max(...scores) : 1;
  if (state.threshold.value !== null) { // a calibrated threshold may lie outside the scores; keep it reachable
    lo = Math.min(lo, state.threshold.value);
    hi = Math.max(hi, state.threshold.value);
  }
  const margin = hi > lo ? (hi - lo) * 0.05 : Math.max(Math.abs(hi) * 0.05, 1e-3);
  state.span = [lo - margin, hi + margin];
  slider.min = String(state.span[0]);
  slider.max = String(state.span[1]);
  slider.step = String((state.span[1] - state.span[0]) / 1000);
  // With no server threshold the slider starts at the median, but rows stay unlabelled until it is moved.
  slider.value = String(state.threshold.value !== null ? state.threshold.value : median(scores.length ? scores : [lo]));
}

function onSliderInput() {
  state.threshold = { value: Number($("threshold").value), source: "manual (slider)" };
  applyThreshold();
}

function labelOf(score) {
  const t = state.threshold.value;
  if (t === null) return null;
  return score > t ? 1 : 0;
}

function applyThreshold() {
  let flagged = 0;
  for (const entry of state.rows) {
    const label = labelOf(entry.result.pred_score);
    entry.label = label;
    if (label === 1) flagged += 1;
    const text = label === null ? "—" : label === 1 ? "anomalous" : "normal";
    const cls = label === null ? "unknown" : text;
    entry.labelCell.textContent = text;
    entry.labelCell.className = `label is-${cls}`;
    entry.row.classList.toggle("row-anomalous", label === 1);
    entry.badge.textContent = text === "—" ? "no threshold" : text;
    entry.badge.className = `badge badge-${cls}`;
    entry.card.classList.toggle("card-anomalous", label === 1);
  }
  const t = state.threshold;
  $("threshold-value").textContent = t.value === null
    ? `no threshold (source: ${t.source}) — move the slider to label the images`
    : `${formatNumber(t.value)} (source: ${t.source})`;
  $("threshold-note").textContent = t.value === null ? state.thresholdNote : "";
  $("threshold-note").hidden = !(t.value === null && state.thresholdNote);
  $("flagged-count").textContent = t.value === null ? `— of ${state.rows.length} flagged` : `${flagged} of ${state.rows.length} flagged`;
  drawHistogram();
}

function drawHistogram() {
  const canvas = $("histogram");
  const ctx = canvas.getContext("2d");
  // Match the canvas bitmap to its CSS size so the drawing stays crisp on high-DPI screens.
  const dpr = window.devicePixelRatio || 1;
  const cssW = canvas.clientWidth || 480;
  const cssH = canvas.clientHeight || 180;
  if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
    canvas.width = Math.round(cssW * dpr);
    canvas.height = Math.round(cssH * dpr);
  }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, cssW, cssH);

  const [lo, hi] = state.span;
  const pad = { left: 28, right: 12, top: 12, bottom: 34 };
  const w = cssW - pad.left - pad.right;
  const h = cssH - pad.top - pad.bottom;
  const x = (v) => pad.left + ((v - lo) / (hi - lo)) * w;
  // Stacked bars: the flagged images of a bin (red) on top of the others (blue), so a bin cut by the line reads right.
  const normal = new Array(HIST_BINS).fill(0);
  const flagged = new Array(HIST_BINS).fill(0);
  for (const { result, label } of state.rows) {
    const bin = Math.min(HIST_BINS - 1, Math.max(0, Math.floor(((result.pred_score - lo) / (hi - lo)) * HIST_BINS)));
    (label === 1 ? flagged : normal)[bin] += 1;
  }
  const peak = Math.max(1, ...normal.map((n, i) => n + flagged[i]));
  const t = state.threshold.value;
  const binW = w / HIST_BINS;
  const bar = (i, from, count, colour) => {
    ctx.fillStyle = colour;
    ctx.fillRect(pad.left + i * binW + 1, pad.top + h - ((from + count) / peak) * h, binW - 2, (count / peak) * h);
  };
  for (let i = 0; i < HIST_BINS; i += 1) {
    if (normal[i]) bar(i, 0, normal[i], "#5b7fa6");
    if (flagged[i]) bar(i, normal[i], flagged[i], "#c0392b");
  }

  ctx.strokeStyle = "#6b7280";
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(pad.left, pad.top + h + 0.5);
  ctx.lineTo(pad.left + w, pad.top + h + 0.5);
  ctx.stroke();

  ctx.fillStyle = "#374151";
  ctx.font = "12px system-ui, sans-serif";
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.fillText(formatNumber(lo), pad.left, pad.top + h + 4);
  ctx.textAlign = "right";
  ctx.fillText(formatNumber(hi), pad.left + w, pad.top + h + 4);
  ctx.textAlign = "center";
  ctx.fillText("anomaly score", pad.left + w / 2, pad.top + h + 18);
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  ctx.fillText(String(peak), pad.left - 6, pad.top);
  ctx.fillText("0", pad.left - 6, pad.top + h);

  const lineX = x(t !== null ? t : Number($("threshold").value));
  ctx.strokeStyle = t !== null ? "#111827" : "#9ca3af";
  ctx.setLineDash(t !== null ? [] : [4, 4]);
  ctx.lineWidth = 2;
  ctx.beginPath();
  ctx.moveTo(lineX, pad.top - 4);
  ctx.lineTo(lineX, pad.top + h);
  ctx.stroke();
  ctx.setLineDash([]);
}

// ---------- CSV ----------

// As zsad.outputs.csv_cell: a cell a spreadsheet would run as a formula (= + - @ tab CR, and ' so that reading
// back is exact) gets a leading ', as OWASP advises; numbers, and text that reads as one, are left alone.
const FORMULA_START = /^[=+\-@\t\r']/;
const NUMBER_TEXT = /^\s*[+-]?((\d(_?\d)*(\.(\d(_?\d)*)?)?|\.\d(_?\d)*)(e[+-]?\d(_?\d)*)?|inf(inity)?|nan)\s*$/i;

function csvCell(value) {
  if (value === null || value === undefined) return "";
  const s = String(value);
  if (typeof value === "number" || !FORMULA_START.test(s) || NUMBER_TEXT.test(s)) return s;
  return `'${s}`;
}

function csvField(value) {
  const s = csvCell(value);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function buildCsv() {
  const t = state.threshold;
  const lines = [CSV_HEADER.join(",")];
  for (const { result: r, label } of state.rows) {
    const fields = [r.file_name, r.pred_score, label, t.value, t.source, r.map_min, r.map_max, r.image_id];
    lines.push(fields.map(csvField).join(","));
  }
  return lines.join("\r\n") + "\r\n";
}

function downloadCsv() {
  if (!state.rows.length) return;
  const blob = new Blob([buildCsv()], { type: "text/csv;charset=utf-8" });
  saveObjectUrl(URL.createObjectURL(blob), "zsad_results.csv");
}

// ---------- formatting ----------

function isFiniteNumber(v) {
  return typeof v === "number" && Number.isFinite(v);
}

function formatNumber(v) {
  return isFiniteNumber(v) ? v.toPrecision(4) : "—";
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

function stem(fileName) {
  const base = String(fileName).split(/[\\/]/).pop();
  return base.replace(/\.[^.]+$/, "") || "image";
}

// ---------- wiring ----------

function onClassNameInput() {
  const ref = state.reference;
  if (ref && ref.sentClassName !== $("class-name").value.trim()) clearReference("class name changed");
}

async function onTokenChange() {
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  await loadMethods();
  await loadStation();
}

// ---------- views (Score / History) ----------

function viewFromHash() {
  return location.hash === "#history" ? "history" : "score";
}

function selectView(view, fromClick) {
  if (view === "history" && !state.station.enabled) view = "score";
  const changed = state.view !== view;
  state.view = view;
  for (const name of ["score", "history"]) {
    const active = name === view;
    $(`view-${name}`).hidden = !active;
    $(`tab-${name}`).setAttribute("aria-selected", String(active));
    $(`tab-${name}`).classList.toggle("is-active", active);
  }
  if (fromClick) {
    const hash = view === "history" ? "#history" : "#score";
    if (location.hash !== hash) history.replaceState(null, "", hash);
  }
  if (changed || fromClick) clearError();
  if (view === "history") onHistoryShown(); // history.js
  else onHistoryHidden(); // history.js: stops the intake panel's refresh
}

// Arrow keys move between the tabs (the tab pattern); handled here, they never reach the review shortcuts.
function onTabKey(e) {
  if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
  e.preventDefault();
  const tabs = Array.from(document.querySelectorAll(".tab")).filter((t) => !t.disabled);
  const i = tabs.indexOf(e.currentTarget);
  const next = tabs[(i + (e.key === "ArrowRight" ? 1 : tabs.length - 1)) % tabs.length];
  next.focus();
  selectView(next.id.replace("tab-", ""), true);
}

// ---------- station and profiles ----------

async function loadStation() {
  try {
    const st = await apiJson("/v1/station");
    state.station = { ...st, enabled: Boolean(st.enabled), reason: st.reason || "" };
  } catch (err) {
    // An older server has no /v1/station (404): the page works as before, without history.
    const reasons = { 404: "this server has no inspection station", 401: "enter the access token first" };
    state.station = { enabled: false, reason: reasons[err.status] || err.message };
    if (!reasons[err.status]) showError(err); // a 401 was already explained by the methods' request
  }
  const on = state.station.enabled;
  $("tab-history").disabled = !on;
  $("tab-history").title = on ? "Inspection history, review and feedback" : `History unavailable: ${state.station.reason}`;
  $("station-note").textContent = on ? "" : `History unavailable: ${state.station.reason}`;
  $("profile-row").hidden = !on;
  stationInfoChanged(); // history.js
  if (on) await loadProfiles();
  else if (state.view === "history") selectView("score", true);
}

async function loadProfiles(selectName) {
  try {
    const data = await apiJson("/v1/profiles");
    state.profiles = (data.profiles || []).slice().sort((a, b) => a.name.localeCompare(b.name));
  } catch (err) {
    showError(err);
    return;
  }
  const select = $("profile");
  const keep = selectName !== undefined ? selectName : select.value;
  select.replaceChildren(el("option", { value: "", text: "None — ad hoc (method and class below)" }));
  for (const p of state.profiles) select.append(el("option", { value: p.name, text: `${p.name} (rev. ${p.revision})` }));
  select.value = state.profiles.some((p) => p.name === keep) ? keep : "";
  profilesChanged(); // history.js: the filter's list
  onProfileChange();
}

function currentProfile() {
  const name = $("profile").value;
  return (name && state.profiles.find((p) => p.name === name)) || null;
}

function describeProfile(p) {
  const thr = p.threshold || {};
  const thrText = isFiniteNumber(thr.value) ? `threshold ${formatNumber(thr.value)}` : "no threshold yet";
  const rule = thr.rule || thr.source;
  const refs = p.num_references ? `${p.num_references} reference image${p.num_references === 1 ? "" : "s"}` : "no reference images";
  const cls = p.class_name ? `class "${p.class_name}"` : "no class name";
  return `Revision ${p.revision} · ${p.method} · ${cls} · ${refs} · ${thrText}${rule ? ` (${rule})` : ""}`;
}

// With a profile the method and class fields show the profile's (disabled: the profile decides them); the ad hoc
// choice is kept and comes back when "None" is chosen again.
function onProfileChange() {
  const p = currentProfile();
  const before = state.appliedProfile || null;
  if (p && state.reference) clearReference(null);
  if (p && !before) state.adhoc = { method: $("method").value, className: $("class-name").value };
  if (p) {
    if (state.methods.some((m) => m.name === p.method)) $("method").value = p.method;
    $("class-name").value = p.class_name || "";
  } else if (before && state.adhoc) {
    $("method").value = state.adhoc.method;
    $("class-name").value = state.adhoc.className;
    state.adhoc = null;
  }
  state.appliedProfile = p ? p.name : null;
  if (p || before) onMethodChange(); // the method's description follows what the field shows
  for (const id of ["method", "class-name", "ref-input"]) $(id).disabled = Boolean(p) || (id === "method" && state.methods.length === 0);
  $("profile-info").textContent = p
    ? describeProfile(p)
    : state.station.enabled ? "Ad hoc: choose the method and class below. Scores are kept in the station's history." : "";
  $("profile-info").classList.toggle("is-set", Boolean(p));
  if (p) {
    $("ref-note").textContent = PROFILE_REF_NOTE;
    $("ref-note").hidden = false;
  } else if ($("ref-note").textContent === PROFILE_REF_NOTE) {
    $("ref-note").hidden = true;
  }
  updateButtons();
}

function renderProfileMethodOptions() {
  const select = $("np-method");
  const keep = select.value;
  select.replaceChildren();
  for (const m of state.methods) {
    const option = el("option", { value: m.name, text: `${m.name}${m.few_shot ? " (few-shot)" : ""}${m.available ? "" : " (unavailable)"}` });
    option.disabled = !m.available;
    select.append(option);
  }
  const chosen = state.methods.find((m) => m.name === keep && m.available) || state.methods.find((m) => m.name === $("method").value);
  if (chosen) select.value = chosen.name;
  describeProfileMethod();
}

function describeProfileMethod() {
  const m = state.methods.find((x) => x.name === $("np-method").value);
  $("np-hint").textContent = m
    ? `${m.name}: ${m.few_shot ? "memorises the reference images (few-shot) and calibrates its threshold on them" : "zero-shot; reference images only calibrate the threshold"}${m.needs_class_name ? "; needs an object class" : ""}.`
    : "";
}

async function createProfile() {
  clearError();
  const name = $("np-name").value.trim();
  const m = state.methods.find((x) => x.name === $("np-method").value);
  const className = $("np-class").value.trim();
  const refs = Array.from($("np-refs").files);
  const thrText = $("np-threshold").value.trim();
  let problem = null;
  if (!name) problem = "Please give the new profile a name.";
  else if (!m) problem = "Please choose a method for the new profile.";
  else if (m.needs_class_name && !className) problem = `Please enter the object class: ${m.name} needs it.`;
  else if (thrText && !Number.isFinite(Number(thrText))) problem = `Threshold ${thrText}: not a number.`;
  else problem = checkLimits(refs);
  if (problem) return showError(problem);
  const form = new FormData();
  form.append("name", name);
  form.append("method", m.name);
  if (className) form.append("class_name", className);
  if (thrText) form.append("threshold", String(Number(thrText)));
  for (const f of refs) form.append("references", f, f.name);
  setBusy(`Creating profile ${name}${refs.length ? ` with ${refs.length} reference image(s)` : ""}…`);
  try {
    const created = await apiJson("/v1/profiles", { method: "POST", body: form });
    $("profile-form").reset();
    renderProfileMethodOptions();
    $("new-profile").open = false;
    await loadProfiles(created.name);
    $("profile").focus();
  } catch (err) {
    showError(err);
  } finally {
    setBusy(null);
  }
}

async function init() {
  $("token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("token").addEventListener("change", onTokenChange);
  $("method").addEventListener("change", onMethodChange);
  $("class-name").addEventListener("input", onClassNameInput);
  $("file-input").addEventListener("change", (e) => {
    clearError();
    addFiles(e.target.files);
    e.target.value = ""; // so picking the same file again still fires "change"
  });
  $("files-clear").addEventListener("click", () => { state.files = []; renderFileList(); });
  $("ref-input").addEventListener("change", updateButtons);
  $("score-btn").addEventListener("click", scoreImages);
  $("ref-btn").addEventListener("click", uploadReferences);
  $("ref-clear").addEventListener("click", () => clearReference(null));
  $("threshold").addEventListener("input", onSliderInput);
  $("csv-btn").addEventListener("click", downloadCsv);
  window.addEventListener("resize", () => { if (state.rows.length) drawHistogram(); });
  $("profile").addEventListener("change", onProfileChange);
  $("profile-form").addEventListener("submit", (e) => { e.preventDefault(); createProfile(); });
  $("np-method").addEventListener("change", describeProfileMethod);
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => selectView(tab.id.replace("tab-", ""), true));
    tab.addEventListener("keydown", onTabKey);
  }
  window.addEventListener("hashchange", () => selectView(viewFromHash(), false));
  setupDropzone();
  renderFileList();
  initHistory(); // history.js
  await loadHealth();
  await loadMethods();
  await loadStation();
  selectView(viewFromHash(), false);
}

document.addEventListener("DOMContentLoaded", init);
