// The duplicates review: start the background scan, follow its progress, then per group the keeper and why,
// each member's distance, verified matches, resolution, size and date; Keep / Trash / Move per image, a
// side-by-side view at full resolution, and the keep rule applied to every group at once after a confirmation.
"use strict";

const review = { groups: [], keepers: new Map(), timer: null };

async function startScan(event) {
  event.preventDefault();
  try {
    await post("/api/dupes/scan", { verify: Number($("verify").value) });
  } catch (err) {
    setStatus($("dupes-status"), err.message, true);
    return;
  }
  pollScan();
}

async function pollScan() {
  clearTimeout(review.timer);
  let state;
  try { state = await api("/api/dupes"); } catch (err) { setStatus($("dupes-status"), err.message, true); return; }
  const bar = $("scan-progress");
  $("scan").disabled = state.state === "running";
  if (state.state === "running") {
    bar.hidden = false;
    bar.max = Math.max(1, state.total); bar.value = state.done;
    setStatus($("dupes-status"), `Scanning (${state.stage})… ${state.done} of ${state.total || "?"}`);
    review.timer = setTimeout(pollScan, 700);
    return;
  }
  bar.hidden = true;
  if (state.state === "failed") { setStatus($("dupes-status"), `The scan failed: ${state.error}`, true); return; }
  if (state.state === "idle") { setStatus($("dupes-status"), "No scan yet: a verified scan of a large library takes minutes."); return; }
  review.groups = state.groups.map(withKeeper);
  renderGroups();
}

// The answer lists the keeper apart from its copies; the review shows them side by side, keeper first.
const withKeeper = (g) => ({ ...g, members: [g.keeper_image, ...g.members] });

const keeperOf = (g) => review.keepers.get(g) ?? g.keeper_id;

function pending(g) {
  return g.members.filter((m) => m.id !== keeperOf(g) && m.action == null);
}

function memberCard(g, m) {
  const isKeeper = m.id === keeperOf(g);
  const facts = [
    m.width ? `${m.width} × ${m.height}` : null, bytes(m.size || 0), m.date ? m.date.slice(0, 10) : null,
    isKeeper ? null : `distance ${fmt(m.distance ?? 0)}`,
    !isKeeper && m.inliers != null ? `verified: ${m.inliers} matching points` : null,
  ].filter(Boolean);
  const buttons = [
    el("button", { type: "button", class: "secondary", text: "Compare", onclick: () => sideBySide(g, m) }),
    el("button", { type: "button", class: "secondary keep", text: isKeeper ? "Kept" : "Keep", disabled: isKeeper ? "" : null,
      onclick: () => { review.keepers.set(g, m.id); renderGroups(); } }),
  ];
  if (!isKeeper && m.action == null) {
    buttons.push(el("button", { type: "button", class: "secondary needs-actions trash", text: "Trash",
      onclick: () => actInGroup(g, [m], "trash") }));
    buttons.push(el("button", { type: "button", class: "secondary needs-actions needs-move", text: "Move",
      onclick: () => actInGroup(g, [m], "move") }));
  }
  const classes = ["member", isKeeper ? "keeper" : "", m.action ? "acted" : ""].join(" ");
  return el("li", { class: classes, "data-id": m.id },
    el("img", { src: thumbUrl(m.id, 256), alt: baseName(m.path), loading: "lazy" }),
    el("span", { class: "name", title: m.path, text: baseName(m.path) }),
    isKeeper ? el("span", { class: "why", text: g.keeper_id === m.id ? `keeper: ${g.why}` : "keeper: your choice" }) : null,
    m.action ? el("span", { class: "why", text: m.action === "trash" ? "in the trash" : "moved" }) : null,
    el("span", { class: "facts", text: facts.join(" · ") }),
    el("div", { class: "member-actions" }, ...buttons));
}

function renderGroups() {
  const list = $("dupes");
  list.replaceChildren(...review.groups.map((g, n) => el("li", { class: "group" },
    el("h3", { text: `Group ${n + 1} · ${g.kind === "exact" ? "identical files" : "edited copies"} · ${g.members.length} images` }),
    el("ul", { class: "members" }, ...g.members.map((m) => memberCard(g, m))))));
  const n = review.groups.length;
  const left = review.groups.reduce((sum, g) => sum + pending(g).length, 0);
  $("apply-all").hidden = !n || !left || !lib.session.actions;
  setStatus($("dupes-status"), n ? `${n} group${n === 1 ? "" : "s"} of duplicates; ${left} cop${left === 1 ? "y" : "ies"} not yet acted on.` : "No duplicates found.");
}

async function actInGroup(g, members, action) {
  const size = members.reduce((sum, m) => sum + (m.size || 0), 0);
  const text = `${action === "trash" ? "Trash" : "Move"} ${members.length} file${members.length === 1 ? "" : "s"} (${bytes(size)}), keeping ${baseName(g.members.find((m) => m.id === keeperOf(g)).path)}?`;
  if (!(await confirmDialog(text))) return;
  await applyGroups([{ keeper: keeperOf(g), ids: members.map((m) => m.id) }], action);
}

async function applyGroups(groups, action) {
  try {
    const answer = await act(action, { groups }, action === "trash" ? "Trashed" : "Moved");
    const done = new Set(answer.done);
    for (const g of review.groups) for (const m of g.members) if (done.has(m.id)) m.action = action;
    renderGroups();
  } catch (err) {
    setStatus($("dupes-status"), err.message, true);
  }
}

async function applyAll() {
  const groups = review.groups.map((g) => ({ g, members: pending(g) })).filter((x) => x.members.length);
  const files = groups.reduce((sum, x) => sum + x.members.length, 0);
  const size = groups.reduce((sum, x) => sum + x.members.reduce((s, m) => s + (m.size || 0), 0), 0);
  if (!(await confirmDialog(`Trash ${files} file${files === 1 ? "" : "s"} (${bytes(size)}) in ${groups.length} group${groups.length === 1 ? "" : "s"}, keeping each group's keeper? Undo is offered afterwards.`))) return;
  await applyGroups(groups.map((x) => ({ keeper: keeperOf(x.g), ids: x.members.map((m) => m.id) })), "trash");
}

// Full resolution: the original where the browser can show it, else the largest rendition.
function fullUrl(m) {
  return /\.(jpe?g|png|gif|webp|bmp|avif)$/i.test(m.path) ? `/api/images/${m.id}/original` : thumbUrl(m.id, 2048);
}

function sideBySide(g, m) {
  const keeper = g.members.find((x) => x.id === keeperOf(g));
  const other = m.id === keeper.id ? g.members.find((x) => x.id !== keeper.id) : m;
  for (const [slot, item] of [["a", keeper], ["b", other]]) {
    $(`sbs-${slot}`).src = fullUrl(item);
    $(`sbs-${slot}`).alt = baseName(item.path);
    $(`sbs-${slot}-cap`).textContent = `${item === keeper ? "Keeper" : "Copy"}: ${item.path}`;
  }
  zoom();
  $("sbs").showModal();
}

function zoom() {
  const value = $("sbs-zoom").value;
  for (const slot of ["a", "b"]) {
    const img = $(`sbs-${slot}`);
    img.classList.toggle("fit", value === "fit");
    img.style.width = value === "fit" ? "" : `${(img.naturalWidth || 0) * Number(value)}px`;
  }
}

function wireReview() {
  $("dupes-form").addEventListener("submit", startScan);
  $("apply-all").addEventListener("click", applyAll);
  $("tab-dupes").addEventListener("click", pollScan);
  $("sbs-zoom").addEventListener("change", zoom);
  for (const slot of ["a", "b"]) $(`sbs-${slot}`).addEventListener("load", zoom);
  $("sbs-close").addEventListener("click", () => $("sbs").close());
  document.addEventListener("lookalike:undone", () => {
    if (review.groups.length) api("/api/dupes").then((s) => { review.groups = s.groups.map(withKeeper); renderGroups(); }).catch(() => {});
  });
}

wireReview();
