// zsad serve — the History view of the inspection station: the inspection list, the review panel and its
// keyboard queue, a dashboard, the feedback actions and the revisions of a profile, and the intake and delivery
// panel (watched folders and sinks, from GET /v1/stats, refreshed while the view shows). Plain ES2020; it uses the
// helpers of app.js ($, el, apiJson, showError, clearError, setBusy, formatNumber, state, loadProfiles), which
// is loaded first. As in app.js, text from the server or from file names goes into the page as textContent only.
"use strict";

const PAGE_SIZE = 25;
const QUEUE_PAGE = 200; // rows per request while a review queue is gathered
const QUEUE_MAX = 2000; // a queue never holds more than this
const SVG_NS = "http://www.w3.org/2000/svg";
const REVIEW_TEXT = { normal: "normal", defect: "defect", skip: "skipped" };
const INTAKE_EVERY_MS = 5000; // the intake and delivery panel's refresh period while the History view shows

const H = {
  cursors: [null], // cursors[i] = the cursor of page i (null: the first page)
  page: 0,
  rows: [], // the rows of the page shown
  next: null,
  listGen: 0, // bumped on every list request so an older answer never overwrites a newer one
  shownOnce: false,
  queue: [], // the list the review panel walks through
  qIndex: -1,
  queueName: "",
  reviewBusy: false,
  reviewGen: 0,
  reviewUrls: [], // blob URLs of the images shown in the review panel
  ppGen: 0,
  dashboard: null, // last dashboard answer, kept to redraw on resize
  profile: null, // full profile of the profile panel
  intakeGen: 0, // bumped by every start and stop of the intake refresh, so an old chain of timers ends by itself
  intakeTimer: null, // the one pending refresh of the intake panel (null while none is due)
  intakeSeen: false, // an answer has shown watched folders or sinks
};

// ---------- small helpers ----------

function pad2(n) {
  return String(n).padStart(2, "0");
}

function formatTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso ? String(iso) : "—";
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

function formatPercent(v) {
  return isFiniteNumber(v) ? `${(v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0)} %` : "—";
}

// A time cell: the full time on a wide screen; a phone hides the time column and shows a short time under the file.
function shortTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
}

function withPhoneTime(text, iso) {
  return [el("span", { text }), el("span", { className: "phone-only cell-sub", text: shortTime(iso) })];
}

function labelText(label) {
  if (label === 1) return "flagged";
  if (label === 0) return "normal";
  return "—";
}

function thresholdValue(thr) {
  if (thr === null || thr === undefined) return null;
  if (typeof thr === "number") return thr;
  return isFiniteNumber(thr.value) ? thr.value : null;
}

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function postJson(path, body) {
  return apiJson(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function isTyping(target) {
  if (!target || !(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName;
  if (tag === "TEXTAREA" || tag === "SELECT") return true;
  if (tag !== "INPUT") return false;
  return !["button", "checkbox", "radio", "range", "submit", "reset", "file", "color"].includes(target.type);
}

// ---------- hooks called by app.js ----------

function stationInfoChanged() {
  const st = state.station;
  if (!st.enabled) {
    $("station-info").textContent = "";
    return;
  }
  const db = st.db === "postgresql" ? "PostgreSQL" : st.db === "sqlite" ? "SQLite" : st.db || "database";
  const keep = [];
  keep.push(st.keep_days ? `rows kept ${st.keep_days} day(s)` : "rows kept for ever");
  if (st.keep_images) keep.push(`files of the newest ${st.keep_images} inspections`);
  $("station-info").textContent = `Station ${st.station || "?"} · ${db} · ${keep.join(", ")}`;
}

function profilesChanged() {
  const select = $("f-profile");
  const keep = select.value;
  select.replaceChildren(el("option", { value: "", text: "All profiles" }));
  for (const p of state.profiles) select.append(el("option", { value: p.name, text: p.name }));
  select.value = state.profiles.some((p) => p.name === keep) ? keep : "";
  updateFlaggedButton();
}

function onHistoryShown() {
  if (!H.shownOnce) {
    H.shownOnce = true;
    const scoring = $("profile").value; // start on the profile the Score view uses
    if (scoring && !$("f-profile").value) $("f-profile").value = scoring;
    updateFlaggedButton();
  }
  loadPage(H.page);
  loadProfilePanel();
  startIntake();
}

function onHistoryHidden() {
  stopIntake();
}

function updateFlaggedButton() {
  const name = $("f-profile").value;
  $("review-flagged-btn").disabled = !name;
  $("review-flagged-btn").title = name
    ? `Unreviewed flagged images of ${name} by score, then its other unreviewed ones`
    : "Choose a profile first: a review queue is per profile";
}

// ---------- the inspection list ----------

function dateParam(id) {
  const v = $(id).value;
  if (!v) return null;
  const d = new Date(v); // datetime-local: the browser's local time
  if (Number.isNaN(d.getTime())) throw new Error(`${id === "f-since" ? "Since" : "Until"}: not a date`);
  return d.toISOString();
}

function numberParam(id, what) {
  const v = $(id).value.trim();
  if (!v) return null;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${what}: ${v} is not a number`);
  return String(n);
}

function filterParams() {
  const q = new URLSearchParams();
  const set = (key, value) => { if (value !== null && value !== "") q.set(key, value); };
  set("profile", $("f-profile").value);
  set("label", $("f-label").value);
  set("reviewed", $("f-reviewed").value);
  set("since", dateParam("f-since"));
  set("until", dateParam("f-until"));
  set("score_min", numberParam("f-score-min", "Score from"));
  set("score_max", numberParam("f-score-max", "Score to"));
  const [sort, order] = $("f-sort").value.split(":");
  q.set("sort", sort);
  q.set("order", order);
  return q;
}

async function loadPage(index) {
  let q;
  try {
    q = filterParams();
  } catch (err) {
    showError(err);
    return;
  }
  const cursor = H.cursors[index];
  if (cursor) q.set("cursor", cursor);
  q.set("limit", String(PAGE_SIZE));
  const gen = ++H.listGen;
  $("history-meta").textContent = "Loading…";
  try {
    const data = await apiJson(`/v1/inspections?${q}`);
    if (gen !== H.listGen) return;
    H.page = index;
    H.rows = data.inspections || [];
    H.next = data.next_cursor || null;
    H.cursors.length = index + 1;
    if (H.next) H.cursors.push(H.next);
    renderHistoryTable();
  } catch (err) {
    if (gen !== H.listGen) return;
    $("history-meta").textContent = "";
    showError(err);
  }
}

function applyFilters() {
  clearError();
  H.cursors = [null];
  loadPage(0);
  loadProfilePanel();
  updateFlaggedButton();
}

function renderHistoryTable() {
  const tbody = $("history-table").tBodies[0];
  const current = currentReviewRow();
  tbody.replaceChildren();
  H.rows.forEach((r, i) => {
    const label = labelText(r.label);
    const review = r.review_label ? REVIEW_TEXT[r.review_label] || r.review_label : "—";
    const reviewCell = el("td", { className: `review is-${r.review_label || "none"}`, text: review });
    if (r.review_note) reviewCell.title = r.review_note;
    const tr = el("tr", { className: "insp-row", tabindex: "0", "data-uid": r.uid, title: "Open the review panel" }, [
      el("td", { className: "time col-wide", text: formatTime(r.created_at) }),
      el("td", { className: "col-opt prof", text: r.profile ? `${r.profile}@${r.revision}` : "ad hoc" }),
      el("td", { className: "file" }, withPhoneTime(r.file_name, r.created_at)),
      el("td", { className: "score num", text: formatNumber(r.score) }),
      el("td", { className: "num col-opt", text: formatNumber(r.threshold) }),
      el("td", { className: `label is-${r.label === 1 ? "anomalous" : r.label === 0 ? "normal" : "unknown"}`, text: label }),
      reviewCell,
    ]);
    tr.classList.toggle("row-anomalous", r.label === 1);
    tr.classList.toggle("is-current", Boolean(current && current.uid === r.uid));
    const open = () => openReview(H.rows, i, "this page of the list");
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); open(); } });
    tbody.append(tr);
  });
  if (!H.rows.length) {
    tbody.append(el("tr", {}, [el("td", { colspan: "7", className: "empty", text: "No inspection matches these filters." })]));
  }
  const first = H.page * PAGE_SIZE + 1;
  const last = H.page * PAGE_SIZE + H.rows.length;
  $("history-meta").textContent = H.rows.length
    ? `Inspections ${first}–${last}${H.next ? " (more on the next page)" : ""}`
    : "No inspections.";
  $("page-info").textContent = `Page ${H.page + 1}`;
  $("page-prev").disabled = H.page === 0;
  $("page-next").disabled = !H.next;
}

// ---------- the review panel and its queue ----------

function currentReviewRow() {
  return !$("review-panel").hidden && H.qIndex >= 0 ? H.queue[H.qIndex] : null;
}

function openReview(queue, index, name) {
  clearError();
  H.queue = queue.slice(); // a later page load must not change the queue under the reviewer
  H.qIndex = index;
  H.queueName = name;
  $("review-status").textContent = "";
  $("review-panel").hidden = false;
  showReviewItem();
  $("review-panel").scrollIntoView({ behavior: "smooth", block: "start" });
  $("review-panel").focus({ preventScroll: true });
}

function closeReview() {
  $("review-panel").hidden = true;
  releaseReviewUrls();
  H.reviewGen += 1;
  renderHistoryTable();
}

function releaseReviewUrls() {
  for (const url of H.reviewUrls) URL.revokeObjectURL(url);
  H.reviewUrls = [];
}

function showReviewItem() {
  const r = H.queue[H.qIndex];
  if (!r) return;
  const n = H.queue.length;
  $("review-position").textContent = `${H.qIndex + 1} of ${n} · ${H.queueName}`;
  $("review-file").textContent = r.file_name;
  const who = r.profile ? `${r.profile}@${r.revision}` : "ad hoc";
  $("review-meta").textContent = `${formatTime(r.created_at)} · ${who} · ${r.method}${r.class_name ? ` · "${r.class_name}"` : ""} · ${r.source || ""}`;

  const thr = isFiniteNumber(r.threshold) ? r.threshold : null;
  const compare = $("review-compare");
  compare.replaceChildren();
  compare.append(el("span", { className: "num", text: `score ${formatNumber(r.score)}` }));
  if (thr === null) {
    compare.append(" · no threshold: not labelled");
    compare.className = "review-compare";
  } else {
    const above = r.score > thr;
    compare.append(` ${above ? ">" : "≤"} threshold `, el("span", { className: "num", text: formatNumber(thr) }), ` → ${above ? "flagged" : "normal"}`);
    compare.className = `review-compare ${above ? "is-anomalous" : "is-normal"}`;
  }
  const current = $("review-current");
  if (r.review_label) {
    current.textContent = `Reviewed: ${REVIEW_TEXT[r.review_label] || r.review_label}${r.reviewed_at ? ` (${formatTime(r.reviewed_at)})` : ""}${r.review_note ? ` — “${r.review_note}”` : ""}`;
    current.className = `review-current is-${r.review_label}`;
  } else {
    current.textContent = "Not reviewed yet.";
    current.className = "review-current";
  }
  $("review-note").value = r.review_note || "";
  $("review-prev").disabled = H.qIndex === 0;
  $("review-next").disabled = H.qIndex >= n - 1;

  releaseReviewUrls();
  const gen = ++H.reviewGen;
  showReviewImage("review-image", r.image_url, `Uploaded image ${r.file_name}`, gen);
  showReviewImage("review-overlay", r.overlay_url, `Image and anomaly heatmap of ${r.file_name}`, gen);
  for (const tr of $("history-table").tBodies[0].rows) tr.classList.toggle("is-current", tr.dataset.uid === r.uid);
}

async function showReviewImage(id, url, alt, gen) {
  const frame = $(id).parentElement;
  const img = el("img", { id, className: "review-img", alt });
  frame.replaceChildren(img);
  if (!url) {
    img.replaceWith(el("p", { id, className: "img-error", text: "This file is no longer kept (retention)." }));
    return;
  }
  try {
    const objectUrl = await fetchObjectUrl(url);
    if (gen !== H.reviewGen) return URL.revokeObjectURL(objectUrl);
    H.reviewUrls.push(objectUrl);
    img.src = objectUrl;
  } catch (err) {
    if (gen !== H.reviewGen) return;
    img.replaceWith(el("p", { id, className: "img-error", text: `Not loaded: ${err.message}` }));
  }
}

function moveReview(step) {
  if (H.reviewBusy) return; // a verdict on its way moves on by itself
  const to = H.qIndex + step;
  if (to < 0 || to >= H.queue.length) return;
  H.qIndex = to;
  $("review-status").textContent = "";
  showReviewItem();
}

// Put a row the server sent back into every list that holds it (the queue and the page may be different arrays).
function mergeRow(row) {
  for (const list of [H.queue, H.rows]) {
    for (const r of list) if (r.uid === row.uid) Object.assign(r, row, { image_url: row.image_url || r.image_url, overlay_url: row.overlay_url || r.overlay_url, map_url: row.map_url || r.map_url });
  }
}

async function submitVerdict(label) {
  const r = currentReviewRow();
  if (!r || H.reviewBusy) return;
  H.reviewBusy = true;
  for (const b of document.querySelectorAll(".verdict")) b.disabled = true;
  clearError();
  try {
    const body = { label };
    const note = $("review-note").value.trim();
    if (note) body.note = note;
    const row = await postJson(`/v1/inspections/${encodeURIComponent(r.uid)}/review`, body);
    mergeRow(row);
    renderHistoryTable();
    const done = `${r.file_name}: ${REVIEW_TEXT[label]}.`;
    if (H.qIndex < H.queue.length - 1) {
      H.qIndex += 1;
      showReviewItem();
      $("review-status").textContent = `${done} Next image.`;
    } else {
      showReviewItem();
      $("review-status").textContent = `${done} End of the queue (${H.queue.length} image${H.queue.length === 1 ? "" : "s"}).`;
    }
    loadProfilePanel(); // the dashboard's rates and the feedback move with every review
  } catch (err) {
    showError(err);
  } finally {
    H.reviewBusy = false;
    for (const b of document.querySelectorAll(".verdict")) b.disabled = false;
  }
}

async function fetchAllInspections(params) {
  const rows = [];
  let cursor = null;
  do {
    const q = new URLSearchParams(params);
    q.set("limit", String(QUEUE_PAGE));
    if (cursor) q.set("cursor", cursor);
    const data = await apiJson(`/v1/inspections?${q}`);
    rows.push(...(data.inspections || []));
    cursor = data.next_cursor || null;
  } while (cursor && rows.length < QUEUE_MAX);
  return rows.slice(0, QUEUE_MAX);
}

async function startFlaggedQueue() {
  clearError();
  const name = $("f-profile").value;
  if (!name) return showError("Choose a profile in the filters first: a review queue is per profile.");
  setBusy(`Gathering the unreviewed images of ${name}…`);
  try {
    const base = { profile: name, reviewed: "false", sort: "score", order: "desc" };
    const flagged = await fetchAllInspections({ ...base, label: "1" });
    const seen = new Set(flagged.map((r) => r.uid));
    const rest = (await fetchAllInspections(base)).filter((r) => !seen.has(r.uid));
    const queue = [...flagged, ...rest];
    if (!queue.length) {
      $("history-meta").textContent = `Nothing to review: every inspection of ${name} has a verdict.`;
      return;
    }
    openReview(queue, 0, `queue of ${name}: ${flagged.length} flagged, then ${rest.length} other unreviewed`);
  } catch (err) {
    showError(err);
  } finally {
    setBusy(null);
  }
}

function onReviewKey(e) {
  if (state.view !== "history" || $("review-panel").hidden) return;
  if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
  if (isTyping(e.target)) {
    if (e.key === "Escape" && e.target === $("review-note")) e.target.blur(); // back to the shortcuts
    return;
  }
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const actions = {
    n: () => submitVerdict("normal"),
    d: () => submitVerdict("defect"),
    s: () => submitVerdict("skip"),
    ArrowRight: () => moveReview(1),
    ArrowLeft: () => moveReview(-1),
  };
  if (!actions[key]) return;
  e.preventDefault();
  actions[key]();
}

// ---------- the profile panel: dashboard, feedback, revisions ----------

function describeFullProfile(p) {
  const setup = p.setup || {};
  const refs = (setup.references || []).length;
  const thr = thresholdValue(p.threshold);
  const source = (p.threshold && (p.threshold.source || p.threshold.rule)) || (setup.threshold && setup.threshold.rule) || "";
  return `Revision ${p.revision} · ${setup.method || "?"}${setup.class_name ? ` · "${setup.class_name}"` : ""} · ${refs} reference image${refs === 1 ? "" : "s"} · threshold ${formatNumber(thr)}${source ? ` (${source})` : ""}`;
}

async function loadProfilePanel() {
  const name = $("f-profile").value;
  const gen = ++H.ppGen;
  $("pp-name").textContent = name;
  $("pp-empty").hidden = Boolean(name);
  $("pp-body").hidden = !name;
  $("pp-summary").hidden = !name;
  if (!name) {
    H.dashboard = null;
    H.profile = null;
    return;
  }
  await Promise.all([loadProfileFull(name, gen), loadDashboard(name, gen), loadFeedback(name, gen)]);
}

async function loadProfileFull(name, gen) {
  try {
    const p = await apiJson(`/v1/profiles/${encodeURIComponent(name)}`);
    if (gen !== H.ppGen) return;
    H.profile = p;
    const summary = $("pp-summary");
    summary.textContent = describeFullProfile(p);
    summary.dataset.revision = String(p.revision);
    const thr = thresholdValue(p.threshold);
    summary.dataset.threshold = thr === null ? "" : String(thr);
    renderRevisions(p);
  } catch (err) {
    if (gen === H.ppGen) showError(err);
  }
}

function renderRevisions(p) {
  const tbody = $("revisions-table").tBodies[0];
  tbody.replaceChildren();
  for (const rev of p.revisions || []) {
    const setup = rev.setup || {};
    const thr = thresholdValue(rev.threshold) ?? thresholdValue(setup.threshold);
    // The action has its own column on a wide screen and sits under the reason on a phone (one of the two shows).
    const action = () => {
      if (rev.revision === p.revision) return el("span", { className: "badge badge-normal", text: "current" });
      const b = el("button", { type: "button", className: "small", text: "Roll back to this", "aria-label": `Roll back ${p.name} to revision ${rev.revision}` });
      b.addEventListener("click", () => rollback(p.name, rev.revision));
      return b;
    };
    tbody.append(el("tr", { "data-revision": String(rev.revision) }, [
      el("td", { className: "num", text: String(rev.revision) }),
      el("td", { className: "time col-wide", text: formatTime(rev.created_at) }),
      el("td", { className: "reason" }, [...withPhoneTime(rev.reason || "", rev.created_at), el("span", { className: "phone-only rev-action-phone" }, [action()])]),
      el("td", { className: "num", text: formatNumber(thr) }),
      el("td", { className: "rev-action col-wide" }, [action()]),
    ]));
  }
}

// A change that makes a new revision (roll back, a feedback action): busy, then its result and both views reloaded.
async function reviseProfile(busy, send, done) {
  clearError();
  setBusy(busy);
  try {
    const p = await send();
    const what = typeof done === "function" ? done() : done; // a feedback action says what changed in its answer
    showFeedbackResult(`${what} — now revision ${p.revision}, threshold ${formatNumber(thresholdValue(p.threshold))}.`);
    await loadProfiles(); // app.js: the Score view's profile list and info
    await loadProfilePanel();
  } catch (err) {
    showError(err);
  } finally {
    setBusy(null);
  }
}

async function rollback(name, revision) {
  await reviseProfile(`Rolling ${name} back to revision ${revision}…`,
    () => postJson(`/v1/profiles/${encodeURIComponent(name)}/rollback`, { revision }),
    `Rolled back to revision ${revision}`);
}

function showFeedbackResult(text) {
  $("fb-result").textContent = text;
  $("fb-result").hidden = !text;
}

async function loadDashboard(name, gen) {
  const [days, bucket] = $("dash-range").value.split(":");
  try {
    const d = await apiJson(`/v1/profiles/${encodeURIComponent(name)}/dashboard?days=${days}&bucket=${bucket}`);
    if (gen !== H.ppGen) return;
    H.dashboard = d;
    renderDashboard(d);
  } catch (err) {
    if (gen === H.ppGen) showError(err);
  }
}

function stat(term, value, detail) {
  const dd = el("dd", {}, [el("strong", { text: value })]);
  if (detail) dd.append(el("span", { className: "muted", text: ` ${detail}` }));
  return [el("dt", { text: term }), dd];
}

function renderDashboard(d) {
  const inspections = d.inspections || 0;
  const flagRate = inspections ? d.flagged / inspections : null;
  const fa = d.reviewed_flagged ? `(${d.false_alarms} of ${d.reviewed_flagged} reviewed flagged)` : "(no flagged image reviewed)";
  const md = d.reviewed_unflagged ? `(${d.missed_defects} of ${d.reviewed_unflagged} reviewed unflagged)` : "(no unflagged image reviewed)";
  $("dash-stats").replaceChildren(
    ...stat("Inspections", String(inspections)),
    ...stat("Flagged", String(d.flagged || 0), `(${formatPercent(flagRate)})`),
    ...stat("Reviewed", String(d.reviewed || 0)),
    ...stat("False-alarm rate", formatPercent(d.false_alarm_rate), fa),
    ...stat("Missed-defect rate", formatPercent(d.missed_defect_rate), md),
    ...stat("Threshold", formatNumber(thresholdValue(d.threshold))),
  );
  $("dash-stats").dataset.falseAlarms = String(d.false_alarms ?? "");
  drawTimeline(d);
  drawScoreHistogram(d);
}

function svgSize(svg, height) {
  const width = Math.max(260, Math.round(svg.getBoundingClientRect().width || svg.parentElement.clientWidth || 480));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", String(height));
  svg.replaceChildren();
  return width;
}

function axisText(svg, x, y, text, anchor = "middle", cls = "axis-label") {
  svg.append(svgEl("text", { x, y, "text-anchor": anchor, class: cls }, text));
}

function drawTimeline(d) {
  const svg = $("dash-timeline");
  const H0 = 170;
  const W = svgSize(svg, H0);
  const size = d.bucket === "day" ? 86400e3 : 3600e3;
  const unit = d.bucket === "day" ? "day" : "hour";
  const pad = { left: 34, right: 38, top: 10, bottom: 34 };
  // The axis covers the whole period, so an hour or a day with no inspection shows as a gap, not as nothing.
  const since = new Date(d.since).getTime();
  const buckets = (d.buckets || []).map((b) => ({ ...b, t: new Date(b.start).getTime() })).filter((b) => Number.isFinite(b.t));
  const start = Math.floor(Math.min(Number.isFinite(since) ? since : Date.now(), ...buckets.map((b) => b.t)) / size) * size;
  const end = Math.max(Date.now(), ...buckets.map((b) => b.t));
  const n = Math.min(24 * 62, Math.floor((end - start) / size) + 1);
  const inspections = new Array(n).fill(0);
  const flagged = new Array(n).fill(0);
  for (const b of buckets) {
    const i = Math.min(n - 1, Math.max(0, Math.floor((b.t - start) / size)));
    inspections[i] += b.inspections || 0;
    flagged[i] += b.flagged || 0;
  }
  const peak = Math.max(1, ...inspections);
  const w = W - pad.left - pad.right;
  const h = H0 - pad.top - pad.bottom;
  const bw = w / n;
  const y = (v) => pad.top + h - (v / peak) * h;
  svg.append(svgEl("line", { x1: pad.left, x2: pad.left + w, y1: pad.top + h + 0.5, y2: pad.top + h + 0.5, class: "axis" }));
  const rate = [];
  for (let i = 0; i < n; i += 1) {
    if (!inspections[i]) continue;
    const x = pad.left + i * bw;
    const gap = bw > 4 ? 1 : 0;
    const label = `${formatTime(new Date(start + i * size).toISOString())}: ${inspections[i]} inspection(s), ${flagged[i]} flagged (${formatPercent(flagged[i] / inspections[i])})`;
    const g = svgEl("g", {});
    g.append(svgEl("title", {}, label));
    g.append(svgEl("rect", { x: x + gap, y: y(inspections[i] - flagged[i]), width: Math.max(1, bw - 2 * gap), height: pad.top + h - y(inspections[i] - flagged[i]), class: "bar-normal" }));
    if (flagged[i]) g.append(svgEl("rect", { x: x + gap, y: y(inspections[i]), width: Math.max(1, bw - 2 * gap), height: y(inspections[i] - flagged[i]) - y(inspections[i]), class: "bar-flagged" }));
    svg.append(g);
    rate.push([x + bw / 2, pad.top + h - (flagged[i] / inspections[i]) * h]);
  }
  if (rate.length > 1) svg.append(svgEl("polyline", { points: rate.map((p) => p.join(",")).join(" "), class: "rate-line" }));
  for (const [cx, cy] of rate) svg.append(svgEl("circle", { cx, cy, r: 3, class: "rate-dot" }));
  const day = (t) => { const dt = new Date(t); return `${pad2(dt.getMonth() + 1)}-${pad2(dt.getDate())}`; };
  const hour = (t) => { const dt = new Date(t); return `${day(t)} ${pad2(dt.getHours())}h`; };
  const tick = unit === "day" ? day : hour;
  axisText(svg, pad.left, H0 - pad.bottom + 16, tick(start), "start");
  axisText(svg, pad.left + w, H0 - pad.bottom + 16, tick(start + (n - 1) * size), "end");
  axisText(svg, pad.left - 6, pad.top + 8, String(peak), "end");
  axisText(svg, pad.left - 6, pad.top + h, "0", "end");
  axisText(svg, pad.left + w + 6, pad.top + 8, "100 %", "start", "axis-label rate-label");
  axisText(svg, pad.left + w + 6, pad.top + h, "0 %", "start", "axis-label rate-label");
  axisText(svg, pad.left + w / 2, H0 - 4, `inspections per ${unit}`);
  $("dash-timeline-cap").textContent = `Inspections per ${unit} (blue normal, red flagged); dots: flag rate per ${unit} (right axis).`;
}

function drawScoreHistogram(d) {
  const svg = $("dash-histogram");
  const H0 = 170;
  const W = svgSize(svg, H0);
  const hist = d.histogram || {};
  const edges = hist.edges || [];
  const counts = hist.counts || [];
  const flagged = hist.flagged || [];
  const pad = { left: 34, right: 14, top: 22, bottom: 34 };
  const w = W - pad.left - pad.right;
  const h = H0 - pad.top - pad.bottom;
  if (!counts.length || edges.length < 2 || !counts.some((c) => c > 0)) {
    axisText(svg, W / 2, H0 / 2, "No inspections in this period.");
    return;
  }
  const lo = edges[0];
  const hi = edges[edges.length - 1];
  const span = hi > lo ? hi - lo : 1;
  const x = (v) => pad.left + ((v - lo) / span) * w;
  const peak = Math.max(1, ...counts);
  const y = (v) => pad.top + h - (v / peak) * h;
  svg.append(svgEl("line", { x1: pad.left, x2: pad.left + w, y1: pad.top + h + 0.5, y2: pad.top + h + 0.5, class: "axis" }));
  counts.forEach((c, i) => {
    if (!c) return;
    const f = Math.min(c, flagged[i] || 0);
    const x0 = x(edges[i]) + 1;
    const bw = Math.max(1, x(edges[i + 1]) - x(edges[i]) - 2);
    const g = svgEl("g", {});
    g.append(svgEl("title", {}, `${formatNumber(edges[i])} – ${formatNumber(edges[i + 1])}: ${c} image(s), ${f} flagged`));
    if (c - f) g.append(svgEl("rect", { x: x0, y: y(c - f), width: bw, height: pad.top + h - y(c - f), class: "bar-normal" }));
    if (f) g.append(svgEl("rect", { x: x0, y: y(c), width: bw, height: y(c - f) - y(c), class: "bar-flagged" }));
    svg.append(g);
  });
  axisText(svg, pad.left, pad.top + h + 16, formatNumber(lo), "start");
  axisText(svg, pad.left + w, pad.top + h + 16, formatNumber(hi), "end");
  axisText(svg, pad.left + w / 2, H0 - 4, "anomaly score");
  axisText(svg, pad.left - 6, pad.top + 8, String(peak), "end");
  axisText(svg, pad.left - 6, pad.top + h, "0", "end");
  const t = thresholdValue(d.threshold);
  if (t !== null) {
    const inside = t >= lo && t <= hi;
    const tx = Math.min(pad.left + w, Math.max(pad.left, x(t)));
    svg.append(svgEl("line", { x1: tx, x2: tx, y1: pad.top - 4, y2: pad.top + h, class: inside ? "threshold-line" : "threshold-line is-outside" }));
    const text = inside ? `threshold ${formatNumber(t)}` : t < lo ? `← threshold ${formatNumber(t)}` : `threshold ${formatNumber(t)} →`;
    const anchor = tx > pad.left + w * 0.7 ? "end" : tx < pad.left + w * 0.3 ? "start" : "middle";
    axisText(svg, tx, pad.top - 8, text, anchor, "axis-label threshold-label");
  }
}

async function loadFeedback(name, gen) {
  try {
    const fb = await apiJson(`/v1/profiles/${encodeURIComponent(name)}/feedback`);
    if (gen !== H.ppGen) return;
    renderFeedback(fb);
  } catch (err) {
    if (gen === H.ppGen) showError(err);
  }
}

function renderFeedback(fb) {
  const cur = fb.current || {};
  const refit = fb.refit;
  const normals = fb.confirmed_normals || { count: 0, new: 0 };
  const items = [
    ...stat("Current threshold", formatNumber(cur.threshold), `${cur.source ? `(${cur.source})` : ""}${isFiniteNumber(cur.flags) ? ` · ${cur.flags} flagged` : ""}`),
  ];
  const canRefit = Boolean(refit && isFiniteNumber(refit.threshold) && refit.changed !== false);
  if (refit && isFiniteNumber(refit.threshold)) {
    const f1 = isFiniteNumber(refit.f1_reviewed) ? ` · F1 on the reviewed ${refit.f1_reviewed.toFixed(2)}` : "";
    const same = refit.changed === false ? " · same as now" : "";
    items.push(...stat("Re-fit threshold", formatNumber(refit.threshold), `from ${refit.n_reviewed} review(s): ${refit.n_defects} defect, ${refit.n_normals} normal${f1}${same}`));
    items.push(...stat("Expected flags", `${refit.flags_before} → ${refit.flags_after}`, "with the re-fit threshold"));
  } else if (refit) {
    items.push(...stat("Re-fit threshold", "—", ""));
  } else {
    // The re-fit only uses reviews of images scored under the current setup (method, options, references).
    const scored = isFiniteNumber(fb.scored) ? `${fb.scored} inspection(s) scored under the current setup, ` : "";
    items.push(...stat("Re-fit threshold", "—", `${scored}none of them reviewed yet`));
  }
  if (refit && refit.note) items.push(el("dt", { className: "sr-only", text: "Note" }), el("dd", { className: "fb-note hint", text: refit.note }));
  items.push(...stat("Confirmed normals", String(normals.new), `not yet in the references (${normals.count} confirmed in all)`));
  $("fb-facts").replaceChildren(...items);
  $("fb-refit").disabled = !canRefit;
  $("fb-normals").disabled = !normals.new;
  $("fb-normals").dataset.newNormals = String(normals.new);
}

async function feedbackAction(action) {
  const name = $("f-profile").value;
  if (!name) return;
  let changed = "Done";
  await reviseProfile(
    action === "refit" ? "Applying the re-fit threshold…" : "Adding the confirmed normals to the references…",
    async () => {
      const res = await postJson(`/v1/profiles/${encodeURIComponent(name)}/feedback`, { action });
      changed = res.changed || changed;
      return res.profile || {};
    },
    () => changed);
}

// ---------- intake and delivery (watched folders and sinks) ----------

// One chain of refreshes at a time: each answer schedules the next; a start or a stop bumps the generation, so an
// answer of an older chain schedules nothing and timers never stack.
function startIntake() {
  stopIntake();
  refreshIntake(H.intakeGen);
}

function stopIntake() {
  H.intakeGen += 1;
  clearTimeout(H.intakeTimer);
  H.intakeTimer = null;
}

async function refreshIntake(gen) {
  try {
    const stats = await apiJson("/v1/stats");
    if (gen !== H.intakeGen) return;
    renderIntake(stats || {});
  } catch (err) {
    if (gen !== H.intakeGen) return;
    intakeFailed(err);
  }
  if (gen !== H.intakeGen || document.hidden) return; // a hidden tab: visibilitychange starts it again
  H.intakeTimer = setTimeout(() => refreshIntake(gen), INTAKE_EVERY_MS);
}

// A failed /v1/stats never touches the rest of the page: one line in the panel, the last tables kept (marked stale).
// A server without /v1/stats (404) keeps the panel hidden, unless it showed folders or sinks before.
function intakeFailed(err) {
  const panel = $("intake-panel");
  if (!H.intakeSeen && err && err.status === 404) {
    panel.hidden = true;
    return;
  }
  const note = $("intake-note");
  note.textContent = `Status not refreshed: ${err instanceof Error ? err.message : String(err)} (retrying every ${INTAKE_EVERY_MS / 1000} s).`;
  note.title = note.textContent;
  note.hidden = false;
  panel.classList.add("is-stale");
  panel.hidden = false;
}

function renderIntake(stats) {
  const folders = Array.isArray(stats.watch) ? stats.watch.filter((w) => w && typeof w === "object") : [];
  const rawSinks = stats.sinks && typeof stats.sinks === "object" && !Array.isArray(stats.sinks) ? stats.sinks : {};
  const sinks = Object.entries(rawSinks).filter(([, s]) => s && typeof s === "object");
  const panel = $("intake-panel");
  $("intake-note").hidden = true;
  $("intake-note").textContent = "";
  panel.classList.remove("is-stale");
  if (!folders.length && !sinks.length) {
    panel.hidden = true; // nothing watched, nothing delivered: the view stays as it was
    return;
  }
  H.intakeSeen = true;
  panel.hidden = false;
  const now = new Date();
  $("intake-updated").textContent = `Updated ${pad2(now.getHours())}:${pad2(now.getMinutes())}:${pad2(now.getSeconds())} · every ${INTAKE_EVERY_MS / 1000} s`;
  $("intake-folders").hidden = !folders.length;
  $("intake-sinks").hidden = !sinks.length;
  $("watch-table").tBodies[0].replaceChildren(...folders.map(folderRow));
  $("sinks-table").tBodies[0].replaceChildren(...sinks.map(([name, s]) => sinkRow(name, s)));
}

function countOf(v) {
  return isFiniteNumber(v) ? v : null;
}

// A count cell: its text is the number ("—" when the server did not send one), data-field names it and data-value
// holds it exactly (empty when unknown), for people and tests alike.
function countCell(field, value, title) {
  const n = countOf(value);
  const td = el("td", { className: `num count`, text: n === null ? "—" : String(n), "data-field": field, "data-value": n === null ? "" : String(n) });
  if (title) td.title = title;
  return td;
}

function formatAge(s) {
  if (!isFiniteNumber(s)) return "—";
  if (s < 60) return `${Math.max(0, Math.round(s))} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function errorCell(text, active) {
  const td = el("td", { className: `intake-error${text && active ? " is-active" : ""}`, text: text || "—", "data-field": "last_error" });
  if (text) td.title = text;
  return td;
}

function folderRow(w) {
  const missing = w.missing === true;
  const folder = typeof w.folder === "string" ? w.folder : String(w.folder ?? "?");
  const settings = [];
  if (w.recursive) settings.push("recursive");
  if (w.complete) settings.push(`complete: ${w.complete}`);
  if (isFiniteNumber(w.settle_s)) settings.push(`settle ${w.settle_s} s`);
  if (w.route && w.route !== "none") settings.push(`route: ${typeof w.route === "string" ? w.route : JSON.stringify(w.route)}`);
  if (isFiniteNumber(w.skipped)) settings.push(`${w.skipped} skipped`);
  if (isFiniteNumber(w.retries)) settings.push(`${w.retries} retries`);
  const tr = el("tr", { className: missing ? "is-missing" : "", "data-folder": folder, "data-state": missing ? "missing" : "watching" }, [
    el("td", { className: "folder", text: folder, title: settings.join(" · ") || folder }),
    el("td", { className: "prof", text: w.profile ? String(w.profile) : "—" }),
    el("td", { className: `state ${missing ? "is-missing" : "is-watching"}`, text: missing ? "MISSING" : "watching", "data-field": "state" }),
    countCell("pending", w.pending),
    countCell("scored", w.scored),
    countCell("errors", w.errors),
    countCell("routed", w.routed),
    errorCell(w.last_error ? String(w.last_error) : "", countOf(w.errors) > 0),
  ]);
  return tr;
}

function describeSink(s) {
  const parts = [];
  const filter = s.filter && typeof s.filter === "object" ? s.filter : {};
  const only = s.only ?? filter.only;
  const minScore = s.min_score ?? filter.min_score;
  const profiles = s.profiles ?? filter.profiles;
  if (only) parts.push(`only ${only}`);
  if (isFiniteNumber(minScore)) parts.push(`score ≥ ${formatNumber(minScore)}`);
  if (Array.isArray(profiles) && profiles.length) parts.push(`profiles ${profiles.join(", ")}`);
  for (const key of ["url", "path", "topic", "broker"]) if (typeof s[key] === "string" && s[key]) parts.push(`${key} ${s[key]}`);
  return parts.join(" · ");
}

function connectionText(s) {
  if (typeof s.connection === "string" && s.connection) return s.connection;
  if (typeof s.connected === "boolean") return s.connected ? "connected" : "not connected";
  return "";
}

function sinkRow(name, s) {
  const sinkName = typeof s.name === "string" && s.name ? s.name : name;
  const pending = countOf(s.pending);
  const conn = connectionText(s);
  const kindCell = el("td", { className: "kind", text: s.kind ? String(s.kind) : "—" });
  if (conn) {
    const ok = conn === "connected";
    kindCell.append(el("span", { className: `cell-sub conn${ok ? "" : " is-down"}`, text: ` ${conn}`, "data-field": "connection" }));
  }
  const filter = describeSink(s);
  const failed = countOf(s.failed_attempts_pending);
  const oldest = isFiniteNumber(s.oldest_pending_s) ? s.oldest_pending_s : null;
  const oldestCell = el("td", { className: "num", text: formatAge(oldest), "data-field": "oldest_pending_s", "data-value": oldest === null ? "" : String(oldest) });
  const error = s.last_error ? String(s.last_error) : s.error ? String(s.error) : "";
  const tr = el("tr", { "data-sink": sinkName, className: pending ? "has-pending" : "" }, [
    el("td", { className: "sink-name", text: sinkName, title: filter || "every event" }),
    kindCell,
    countCell("delivered", s.delivered),
    countCell("pending", s.pending, failed ? `${failed} failed attempt(s) on the pending events` : ""),
    oldestCell,
    errorCell(error, pending > 0 || Boolean(s.error)),
  ]);
  return tr;
}

// ---------- wiring ----------

function initHistory() {
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); applyFilters(); });
  for (const id of ["f-profile", "f-label", "f-reviewed", "f-sort"]) $(id).addEventListener("change", applyFilters);
  $("f-profile").addEventListener("change", () => showFeedbackResult(""));
  $("f-reset").addEventListener("click", () => {
    const keep = $("f-profile").value;
    $("filters").reset();
    $("f-profile").value = keep;
    applyFilters();
  });
  $("page-prev").addEventListener("click", () => { if (H.page > 0) loadPage(H.page - 1); });
  $("page-next").addEventListener("click", () => { if (H.next) loadPage(H.page + 1); });
  $("review-flagged-btn").addEventListener("click", startFlaggedQueue);
  $("review-close").addEventListener("click", closeReview);
  $("review-prev").addEventListener("click", () => moveReview(-1));
  $("review-next").addEventListener("click", () => moveReview(1));
  $("verdict-normal").addEventListener("click", () => submitVerdict("normal"));
  $("verdict-defect").addEventListener("click", () => submitVerdict("defect"));
  $("verdict-skip").addEventListener("click", () => submitVerdict("skip"));
  $("fb-refit").addEventListener("click", () => feedbackAction("refit"));
  $("fb-normals").addEventListener("click", () => feedbackAction("add_normals"));
  $("dash-range").addEventListener("change", () => { const name = $("f-profile").value; if (name) loadDashboard(name, H.ppGen); });
  document.addEventListener("keydown", onReviewKey);
  // A hidden browser tab asks nothing; the refresh starts again (at once) when the History view shows again.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) stopIntake();
    else if (state.view === "history") startIntake();
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (H.dashboard && state.view === "history") renderDashboard(H.dashboard); }, 150);
  });
  updateFlaggedButton();
}
