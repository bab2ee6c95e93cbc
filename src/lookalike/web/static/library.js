// The library: the whole collection as a thumbnail grid, and one image's detail view.
// The grid is virtual: it is as tall as the whole collection, but only the tiles near the viewport exist, and
// only their pages of /api/images are fetched (by cursor when scrolling on, by offset after a jump).
"use strict";

const PAGE = 120; // rows per request
const TILE = 180; // px, with the gap below
const GAP = 8;
const lib = {
  session: { csrf: "", actions: false, read_only: true },
  folder: "", q: "", sort: "folder",
  total: 0, cols: 1, pages: new Map(), cursors: new Map(), pending: new Set(), epoch: 0,
  detail: -1, // position in the listing of the image the detail view shows
  lastAction: null, // {journal, text}
};

async function post(url, body) {
  return api(url, { method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": lib.session.csrf },
    body: JSON.stringify(body) });
}

function confirmDialog(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

const bytes = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.round(n / 1e3)} kB`);

// ---------- session and actions ----------
async function loadSession() {
  try { lib.session = await api("/api/session"); } catch (err) { lib.session = { csrf: "", actions: false }; }
  document.body.classList.toggle("no-actions", !lib.session.actions);
  document.body.classList.toggle("no-move", !lib.session.move);
}

function showUndo(answer, verb) {
  const n = answer.done.length;
  const skipped = answer.skipped.length ? ` (${answer.skipped.length} skipped: ${answer.skipped[0].reason})` : "";
  lib.lastAction = answer.journal ? { journal: answer.journal } : null;
  $("undo-text").textContent = `${verb} ${n} file${n === 1 ? "" : "s"}${skipped}.`;
  $("undo").hidden = !answer.journal || n === 0;
  $("undo-bar").hidden = false;
}

async function act(action, body, verb) {
  const answer = await post("/api/actions", { action, ...body });
  showUndo(answer, verb);
  resetGrid();
  return answer;
}

async function undoLast() {
  if (!lib.lastAction) return;
  try {
    const answer = await post("/api/undo", { journal: lib.lastAction.journal });
    lib.lastAction = null;
    $("undo-text").textContent = `Put back ${answer.done.length} file(s); \`lookalike index\` lists them again.`;
    $("undo").hidden = true;
    document.dispatchEvent(new CustomEvent("lookalike:undone"));
  } catch (err) {
    $("undo-text").textContent = `Undo failed: ${err.message}`;
  }
}

async function actOnImages(action, ids, names) {
  const what = ids.length === 1 ? names[0] : `${ids.length} images`;
  const text = action === "trash" ? `Move ${what} to the trash? (Undo is offered afterwards.)`
    : `Move ${what} to the server's move-to folder? (Undo is offered afterwards.)`;
  if (!(await confirmDialog(text))) return null;
  try {
    return await act(action, { ids }, action === "trash" ? "Trashed" : "Moved");
  } catch (err) {
    setStatus($("lib-status"), err.message, true);
    return null;
  }
}

// ---------- the grid ----------
function layout() {
  const grid = $("lib-grid");
  lib.cols = Math.max(1, Math.floor((grid.clientWidth + GAP) / (TILE + GAP)));
  grid.style.height = `${Math.ceil(lib.total / lib.cols) * (TILE + GAP)}px`;
}

function listingQuery(extra) {
  const params = new URLSearchParams({ sort: lib.sort, limit: PAGE, ...extra });
  if (lib.folder) params.set("folder", lib.folder);
  if (lib.q) params.set("q", lib.q);
  return `/api/images?${params}`;
}

async function fetchPage(p) {
  if (lib.pages.has(p) || lib.pending.has(p)) return;
  lib.pending.add(p);
  const epoch = lib.epoch;
  const cursor = lib.cursors.get(p);
  try {
    const data = await api(listingQuery(cursor ? { cursor } : { offset: p * PAGE }));
    if (epoch !== lib.epoch) return;
    lib.pages.set(p, data.images);
    if (data.next) lib.cursors.set(p + 1, data.next);
    if (data.total !== lib.total) { lib.total = data.total; showCount(); layout(); }
    render();
  } catch (err) {
    if (epoch === lib.epoch) setStatus($("lib-status"), err.message, true);
  } finally {
    lib.pending.delete(p);
  }
}

function imageAt(i) {
  const page = lib.pages.get(Math.floor(i / PAGE));
  return page ? page[i % PAGE] : undefined;
}

function tile(i, image) {
  const name = baseName(image.path);
  return el("div", { class: "tile", role: "listitem", "data-i": i, "data-id": image.id,
    style: { top: `${Math.floor(i / lib.cols) * (TILE + GAP)}px`, left: `${(i % lib.cols) * (TILE + GAP)}px` } },
  el("button", { type: "button", title: image.path, onclick: () => openDetail(i) },
    el("img", { src: thumbUrl(image.id, 256), alt: name, loading: "lazy", width: TILE, height: TILE })),
  el("span", { class: "tile-name", text: name }));
}

let renderQueued = false;
function render() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const grid = $("lib-grid");
    if ($("panel-library").hidden) return;
    const top = -grid.getBoundingClientRect().top;
    const row = TILE + GAP;
    const first = Math.max(0, Math.floor(top / row) - 2) * lib.cols;
    const last = Math.min(lib.total, Math.ceil((top + window.innerHeight) / row + 2) * lib.cols);
    const keep = new Map();
    for (const node of grid.children) keep.set(Number(node.dataset.i), node);
    const nodes = [];
    for (let i = first; i < last; i++) {
      const image = imageAt(i);
      if (!image) { fetchPage(Math.floor(i / PAGE)); continue; }
      const old = keep.get(i);
      nodes.push(old && Number(old.dataset.id) === image.id ? old : tile(i, image));
    }
    grid.replaceChildren(...nodes);
  });
}

function showCount() {
  $("lib-count").textContent = `${Number(lib.total).toLocaleString()} image${lib.total === 1 ? "" : "s"}`;
}

async function resetGrid() {
  lib.epoch += 1;
  lib.pages.clear(); lib.cursors.clear(); lib.pending.clear();
  setStatus($("lib-status"), "");
  $("lib-grid").replaceChildren();
  renderCrumbs();
  try {
    const first = await api(listingQuery({ offset: 0 }));
    lib.total = first.total;
    lib.pages.set(0, first.images);
    if (first.next) lib.cursors.set(1, first.next);
  } catch (err) {
    setStatus($("lib-status"), err.message, true);
    return;
  }
  showCount();
  if (!lib.total) setStatus($("lib-status"), lib.q || lib.folder ? "No image matches." : "The index is empty.");
  layout();
  render();
}

// ---------- folders ----------
function goFolder(folder) { lib.folder = folder; resetGrid(); }

async function renderCrumbs() {
  const parts = lib.folder ? lib.folder.split("/") : [];
  const crumbs = [el("button", { type: "button", class: "crumb", text: "All photos", onclick: () => goFolder("") })];
  parts.forEach((part, n) => crumbs.push(el("span", { class: "sep", text: "/" }),
    el("button", { type: "button", class: "crumb", text: part, onclick: () => goFolder(parts.slice(0, n + 1).join("/")) })));
  $("crumbs").replaceChildren(...crumbs);
  try {
    const data = await api(`/api/folders?${new URLSearchParams({ folder: lib.folder })}`);
    $("subfolders").replaceChildren(...data.folders.map((name) => el("li", {},
      el("button", { type: "button", class: "secondary folder", text: name,
        onclick: () => goFolder(lib.folder ? `${lib.folder}/${name}` : name) }))));
  } catch (err) {
    $("subfolders").replaceChildren();
  }
}

// ---------- detail ----------
async function openDetail(i) {
  let image = imageAt(i);
  if (!image) {
    await fetchPage(Math.floor(i / PAGE));
    image = imageAt(i);
  }
  if (!image) return;
  lib.detail = i;
  $("detail-img").src = thumbUrl(image.id, 2048);
  $("detail-img").alt = baseName(image.path);
  $("detail-name").textContent = baseName(image.path);
  $("detail-original").href = `/api/images/${image.id}/original`;
  $("detail-prev").disabled = i <= 0;
  $("detail-next").disabled = i >= lib.total - 1;
  if (!$("detail").open) $("detail").showModal();
  const facts = [["Path", image.path], ["Resolution", image.width ? `${image.width} × ${image.height}` : "—"],
    ["File size", bytes(image.size)], ["Date", image.date.replace("T", " ")]];
  const dl = $("detail-facts");
  dl.replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  try {
    const more = await api(`/api/images/${image.id}`);
    if (lib.detail !== i) return;
    if (more.taken) dl.append(el("dt", { text: "Taken" }), el("dd", { text: more.taken.replace("T", " ") }));
    if (more.camera) dl.append(el("dt", { text: "Camera" }), el("dd", { text: more.camera }));
  } catch (err) { /* the facts shown already are enough */ }
}

function closeDetail() { if ($("detail").open) $("detail").close(); lib.detail = -1; }

function moveDetail(step) {
  const next = lib.detail + step;
  if (lib.detail >= 0 && next >= 0 && next < lib.total) openDetail(next);
}

async function detailAction(action) {
  const image = imageAt(lib.detail);
  if (!image) return;
  closeDetail();
  await actOnImages(action, [image.id], [baseName(image.path)]);
}

function wireLibrary() {
  $("lib-q").addEventListener("input", () => {
    clearTimeout(lib.typing);
    lib.typing = setTimeout(() => { lib.q = $("lib-q").value.trim(); resetGrid(); }, 250);
  });
  $("lib-sort").addEventListener("change", () => { lib.sort = $("lib-sort").value; resetGrid(); });
  window.addEventListener("scroll", render, { passive: true });
  window.addEventListener("resize", () => { layout(); render(); });
  $("tab-library").addEventListener("click", () => { layout(); render(); });
  $("detail-close").addEventListener("click", closeDetail);
  $("detail-prev").addEventListener("click", () => moveDetail(-1));
  $("detail-next").addEventListener("click", () => moveDetail(1));
  $("detail-similar").addEventListener("click", () => {
    const image = imageAt(lib.detail);
    closeDetail();
    if (image) location.hash = `#id=${image.id}`;
  });
  $("detail-trash").addEventListener("click", () => detailAction("trash"));
  $("detail-move").addEventListener("click", () => detailAction("move"));
  $("detail").addEventListener("keydown", (e) => {
    if (e.key === "ArrowRight") { e.preventDefault(); moveDetail(1); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); moveDetail(-1); }
  });
  $("detail").addEventListener("close", () => { lib.detail = -1; });
  $("undo").addEventListener("click", undoLast);
}

wireLibrary();
loadSession();
resetGrid();
