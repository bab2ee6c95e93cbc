"""A self-contained HTML report of search results: each query beside its top-k thumbnails with distances, and a
distance-matrix heat map. Thumbnails are inlined as base64 JPEG and the heat map as a base64 PNG, so the file
can be mailed or opened anywhere."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from ...atomic import atomic_write

THUMB = 112  # thumbnail side, pixels


def thumbnail_data_uri(path, size: int = THUMB) -> str:
    from ...images import load_image

    try:
        img = load_image(path, min_size=size)
    except Exception:  # a file gone since indexing: an empty cell, not a failed report
        return ""
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


# Viridis at five stops (reversed below, as the matplotlib map): the plain heat map's colours.
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float32)


def plain_heatmap_data_uri(dist: np.ndarray, side: int = 600) -> str:
    """The distance matrix as a PNG of coloured cells with Pillow alone (installs without matplotlib)."""
    from PIL import Image

    top = float(max(1.0, dist.max())) if dist.size else 1.0
    t = 1.0 - np.clip(np.asarray(dist, np.float32) / top, 0.0, 1.0)  # near: yellow, far: purple
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    rgb = np.stack([np.interp(t, stops, _VIRIDIS[:, c]) for c in range(3)], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    cell = max(1, side // max(1, len(dist)))
    img = img.resize((img.width * cell, img.height * cell), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def heatmap_data_uri(dist: np.ndarray, labels: list[str]) -> str:
    try:
        import matplotlib
    except ImportError:  # matplotlib comes with the train extra: cells without axes or labels
        return plain_heatmap_data_uri(dist)

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(labels)
    side = min(14.0, max(5.0, 0.09 * n + 3))
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=100)
    im = ax.imshow(dist, cmap="viridis_r", vmin=0.0, vmax=float(max(1.0, dist.max())))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="distance (L2 of unit vectors)")
    if n <= 60:  # beyond that the labels are unreadable
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        fs = max(3, min(8, int(400 / max(n, 1))))
        ax.set_xticklabels(labels, rotation=90, fontsize=fs)
        ax.set_yticklabels(labels, fontsize=fs)
    ax.set_title("pairwise distances")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table.q{border-collapse:collapse;margin-bottom:1.5em}
table.q td{padding:4px;text-align:center;vertical-align:top;font-size:12px}
td.query{background:#eef}
td.missed{background:#f6f6f6;opacity:.8}
img.t{width:%dpx;height:%dpx;object-fit:contain;background:#f4f4f4;border:3px solid transparent}
img.ok{border-color:#2a2}
img.no{border-color:#c33}
.figs td{padding:2px 12px}
img.heat{max-width:100%%;height:auto}
""" % (THUMB, THUMB)


def _label(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


# Marks a page as written here, so a later run may replace it and never a page it did not write.
GENERATOR_TAG = "<meta name='generator' content='lookalike report'>"


def is_own_report(path) -> bool:
    """Whether `path` is missing or a report this module wrote (safe to replace)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return GENERATOR_TAG.encode() in head


def write_report(path, rows: list[dict], dist: np.ndarray | None, labels: list[str], root: Path, figures: dict,
                 keys: tuple[str, ...] | None = None, title: str = "Lookalike search report",
                 intro: str | None = None) -> Path:
    """rows: [{"query", "results": [{"rank", "path", "distance", "relevant"?}], "missed"?: [{"rank", "path",
    "distance"}], "caption"?}]; dist: matrix over `labels`, or None for no heat map; `keys`: the figures shown."""
    path = Path(path)
    root = Path(root)
    cache: dict[str, str] = {}

    def thumb(p: str) -> str:
        if p not in cache:
            cache[p] = thumbnail_data_uri(p)
        return cache[p]

    parts = [f"<!doctype html><html><head><meta charset='utf-8'>{GENERATOR_TAG}<title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    keys = [k for k in (keys or ("model", "originals", "queries", "precision_at_1", "precision_at_5",
                                 "same_photo_distance_max", "different_photo_distance_min")) if k in figures]
    if keys:
        parts.append("<table class='figs'>")
        for k in keys:
            v = figures[k]
            parts.append(f"<tr><td>{html.escape(k.replace('_', ' '))}</td>"
                         f"<td>{v:.3f}</td></tr>" if isinstance(v, float) else
                         f"<tr><td>{html.escape(k.replace('_', ' '))}</td><td>{html.escape(str(v))}</td></tr>")
        parts.append("</table>")
    parts.append(f"<p>{html.escape(intro)}</p>" if intro else
                 "<p>Each row: the query (left, blue) and its nearest images with their distance. "
                 "Green frame: from the same photo; red: another photo.</p>")
    for row in rows:
        q = row["query"]
        parts.append("<table class='q'><tr>")
        caption = f"<br>{html.escape(row['caption'])}" if row.get("caption") else ""
        parts.append(f"<td class='query'><img class='t' src='{thumb(q)}' alt=''><br>"
                     f"{html.escape(_label(q, root))}{caption}</td>")
        for hit in row["results"]:
            rel = hit.get("relevant")
            cls = "ok" if rel else ("no" if rel is not None else "")
            parts.append(f"<td><img class='t {cls}' src='{thumb(hit['path'])}' alt=''><br>"
                         f"#{hit['rank']} {html.escape(_label(hit['path'], root))}<br>d = {hit['distance']:.3f}</td>")
        for hit in row.get("missed", []):  # positives ranked below the shown results
            parts.append(f"<td class='missed'><img class='t ok' src='{thumb(hit['path'])}' alt=''><br>"
                         f"#{hit['rank']} {html.escape(_label(hit['path'], root))}<br>d = {hit['distance']:.3f}</td>")
        parts.append("</tr></table>")
    if dist is not None:
        parts.append("<h2>Distance matrix</h2>")
        parts.append(f"<img class='heat' src='{heatmap_data_uri(dist, [_label(p, root) for p in labels])}' "
                     "alt='distance heat map'>")
    parts.append("</body></html>")
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
    return path
