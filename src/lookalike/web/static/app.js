// Lookalike page: search by upload or by indexed image, compare. The library and its detail view are in
// library.js, the duplicates review in review.js.
// Plain DOM code, no framework and no build step. Text from the server always goes through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  stats: null,
  compare: [], // {id, name, url, file?}
  queryUrl: null, // object URL of the uploaded query, revoked when replaced
  queryFile: null, // the last uploaded query, searched again when the number of results changes
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") Object.assign(node.style, value); // CSSOM, which the page's CSP allows
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const baseName = (path) => String(path).split(/[\\/]/).pop();
const thumbUrl = (id, size = 256) => `/api/images/${encodeURIComponent(id)}/thumbnail?size=${size}`;
const fmt = (x, digits = 3) => Number(x).toFixed(digits);

function setStatus(node, message, isError = false) {
  node.textContent = message || "";
  node.classList.toggle("error", Boolean(isError));
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the server did not answer (is `lookalike serve` still running?)");
  }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return body;
}

// ---------- tabs ----------
const TABS = ["library", "search", "compare", "dupes"];
function showTab(name) {
  for (const tab of TABS) {
    const on = tab === name;
    $(`tab-${tab}`).setAttribute("aria-selected", String(on));
    $(`panel-${tab}`).hidden = !on;
  }
}

// ---------- index facts ----------
async function loadStats() {
  try {
    const s = await api("/api/stats");
    state.stats = s;
    $("fact-count").textContent = Number(s.count).toLocaleString();
    $("fact-model").textContent = `${s.model} (${s.pooling})`;
    $("fact-dim").textContent = s.dim;
    $("fact-updated").textContent = s.updated_at ? new Date(s.updated_at).toLocaleString() : "unknown";
    $("fact-updated").title = s.updated_at || "";
  } catch (err) {
    setStatus($("status"), `Could not read the index facts: ${err.message}`, true);
  }
}

// ---------- search ----------
function resultCard(r) {
  const picked = state.compare.some((c) => c.id === r.id);
  const checkbox = el("input", { type: "checkbox" });
  checkbox.checked = picked;
  checkbox.addEventListener("change", () => {
    if (checkbox.checked) addToCompare({ id: r.id, name: baseName(r.path), url: thumbUrl(r.id) });
    else removeFromCompare((c) => c.id === r.id);
  });
  // Closeness bar on a fixed scale: full at distance 0, empty at 1.4 (unrelated photos sit around 1.2-1.4).
  const width = Math.max(2, 100 * (1 - r.distance / 1.4));
  return el("li", { class: "card", "data-id": r.id },
    el("button", { class: "thumb", type: "button", title: `Search from ${baseName(r.path)}`,
      onclick: () => { location.hash = `#id=${r.id}`; } },
      el("img", { src: thumbUrl(r.id), alt: baseName(r.path), loading: "lazy", width: 256, height: 256 })),
    el("div", { class: "meta" },
      el("span", { class: "rank", text: `#${r.rank}` }),
      el("span", { class: "dist", title: "distance (smaller is closer)", text: fmt(r.distance) }),
      el("span", { class: "sim", title: "cosine similarity", text: `cos ${fmt(r.similarity, 2)}` }),
    ),
    // Spatial verification (`serve --verify`): local features of the query seen again in the same arrangement.
    // A result that was not verified says nothing (not "0 matches", which reads as "no match").
    r.inliers == null ? null : el("div", { class: "inliers",
      title: "local features that agree on one transform with the query's (spatial verification)",
      text: `verified: ${r.inliers} matching point${r.inliers === 1 ? "" : "s"}` }),
    el("div", { class: "bar", "aria-hidden": "true" }, el("span", { style: { width: `${width.toFixed(0)}%` } })),
    el("div", { class: "name", title: r.path, text: baseName(r.path) }),
    el("label", { class: "pick" }, checkbox, "compare"));
}

function showResults(data) {
  const list = $("results");
  list.replaceChildren();
  for (const r of data.results) list.append(resultCard(r));
  const n = data.results.length;
  setStatus($("status"), n ? `${n} most similar image${n === 1 ? "" : "s"} (distance: smaller is more alike)` : "The index is empty.");
}

function showQuery(src, name) {
  $("query-img").src = src;
  $("query-name").textContent = name;
  $("query-name").title = name;
  $("query").hidden = false;
}

async function searchFile(file) {
  if (!file) return;
  showTab("search");
  if (state.stats && file.size > state.stats.max_upload_bytes) {
    setStatus($("status"), `${file.name} is ${(file.size / 1e6).toFixed(1)} MB: over the ${(state.stats.max_upload_bytes / 1e6).toFixed(0)} MB limit`, true);
    return;
  }
  if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
  state.queryUrl = URL.createObjectURL(file);
  state.queryFile = file;
  showQuery(state.queryUrl, file.name);
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("k", $("k").value);
  setStatus($("status"), "Searching…");
  $("results").setAttribute("aria-busy", "true");
  try {
    showResults(await api("/api/search", { method: "POST", body: form }));
  } catch (err) {
    $("results").replaceChildren();
    // A refused upload is not shown as the query: the browser may not be able to draw it either.
    $("query").hidden = true;
    $("query-img").removeAttribute("src");
    setStatus($("status"), err.message, true);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

async function searchId(id) {
  showTab("search");
  setStatus($("status"), "Searching…");
  try {
    const data = await api(`/api/search?id=${encodeURIComponent(id)}&k=${encodeURIComponent($("k").value)}`);
    showQuery(thumbUrl(id), baseName(data.query));
    $("query-name").title = data.query;
    showResults(data);
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (err) {
    setStatus($("status"), err.message, true);
  }
}

function routeFromHash() {
  const match = /^#id=(\d+)$/.exec(location.hash);
  if (match) searchId(Number(match[1]));
}

// ---------- compare ----------
function addToCompare(item) {
  const max = state.stats ? state.stats.max_compare : 50;
  if (state.compare.length >= max) {
    setStatus($("compare-status"), `At most ${max} images at a time.`, true);
    return;
  }
  if (item.id != null && state.compare.some((c) => c.id === item.id)) return;
  state.compare.push(item);
  renderTray();
}

function removeFromCompare(predicate) {
  for (const item of state.compare.filter(predicate)) if (item.file) URL.revokeObjectURL(item.url);
  state.compare = state.compare.filter((c) => !predicate(c));
  renderTray();
  for (const box of document.querySelectorAll(".card")) {
    const id = Number(box.dataset.id);
    box.querySelector(".pick input").checked = state.compare.some((c) => c.id === id);
  }
}

function renderTray() {
  const tray = $("compare-tray");
  tray.replaceChildren();
  for (const item of state.compare) {
    tray.append(el("li", { title: item.name },
      el("img", { src: item.url, alt: item.name }),
      el("button", { class: "remove secondary", type: "button", "aria-label": `Remove ${item.name}`, text: "×",
        onclick: () => removeFromCompare((c) => c === item) }),
      el("span", { text: item.name })));
  }
  const n = state.compare.length;
  $("compare-count").hidden = n === 0;
  $("compare-count").textContent = n;
  $("compare-run").disabled = n < 2;
}

function heat(value) {
  // Closer pairs get a stronger tint, on a fixed scale (distance 0 to 1.2) so colours mean the same in every
  // table; the accent colour keeps it readable in light and dark themes.
  const t = 1 - Math.min(value / 1.2, 1);
  return { background: `color-mix(in srgb, var(--accent) ${Math.round(t * 45)}%, transparent)` };
}

async function runCompare() {
  // Indexed ids go first, then uploads: the server answers in that order.
  const ordered = [...state.compare.filter((c) => c.id != null), ...state.compare.filter((c) => c.id == null)];
  const form = new FormData();
  for (const item of ordered) {
    if (item.id != null) form.append("ids", String(item.id));
    else form.append("images", item.file, item.name);
  }
  setStatus($("compare-status"), "Comparing…");
  try {
    const data = await api("/api/compare", { method: "POST", body: form });
    renderTable(ordered, data);
    setStatus($("compare-status"), "Distance between each pair (hover a cell for the cosine similarity).");
  } catch (err) {
    setStatus($("compare-status"), err.message, true);
  }
}

function renderTable(items, data) {
  const head = el("tr", {}, el("th"));
  items.forEach((item, i) => head.append(el("th", { title: data.paths[i] },
    el("img", { src: item.url, alt: item.name }), baseName(data.paths[i]))));
  const table = el("table", { class: "dist-table" }, el("thead", {}, head));
  const body = el("tbody");
  data.distance.forEach((row, i) => {
    const tr = el("tr", {}, el("th", { title: data.paths[i], scope: "row" }, el("img", { src: items[i].url, alt: items[i].name })));
    row.forEach((d, j) => tr.append(el("td", {
      class: i === j ? "self" : "", title: `cosine similarity ${fmt(data.similarity[i][j])}`,
      style: i === j ? {} : heat(d), text: fmt(d) })));
    body.append(tr);
  });
  table.append(body);
  $("compare-table").replaceChildren(table);
}

// ---------- wiring ----------
function wire() {
  for (const tab of TABS) $(`tab-${tab}`).addEventListener("click", () => showTab(tab));
  $("file").addEventListener("change", (e) => { searchFile(e.target.files[0]); e.target.value = ""; });
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); searchFile(e.dataTransfer.files[0]); });
  // A file dropped outside the drop zone would make the browser leave the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("k").addEventListener("change", () => {
    if (/^#id=/.test(location.hash)) routeFromHash();
    else if (state.queryFile) searchFile(state.queryFile);
  });
  $("compare-files").addEventListener("change", (e) => {
    for (const file of e.target.files) addToCompare({ id: null, name: file.name, url: URL.createObjectURL(file), file });
    e.target.value = "";
  });
  $("compare-run").addEventListener("click", runCompare);
  $("compare-clear").addEventListener("click", () => { removeFromCompare(() => true); $("compare-table").replaceChildren(); });
  window.addEventListener("hashchange", routeFromHash);
  renderTray();
}

wire();
loadStats().then(routeFromHash);
