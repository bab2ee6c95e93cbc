"""Feature extraction and incremental indexing with the real default backbone on real photos:
add / change / delete / rename / copy, bad files, backbone mismatch, kill -9 then resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from lookalike.errors import LookalikeError
from lookalike.search.describe.features import load_embedder, prepare_image
from lookalike.search.store.index import ImageIndex
from lookalike.search.sample_photos import jpeg_bytes
from lookalike.search.indexing.sync import index_folder

from helpers.cli import INTERRUPTIBLE
from helpers.search import photo, write_originals


def test_embed_images_unit_vectors_and_threads(home, embedder):
    emb = embedder
    imgs = [photo("coffee"), photo("rocket"), photo("chelsea")]
    v = emb.embed_images(imgs)
    assert v.shape == (3, emb.dim) and v.dtype == np.float32 and emb.dim == 1280 + 320  # head and blocks
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    out = [None] * 4

    def work(i):
        out[i] = emb.embed_images(imgs)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all(np.allclose(o, v, atol=1e-5) for o in out)
    assert emb.embed_images([]).shape == (0, emb.dim)


def test_prepare_image_resizes_shorter_side_then_crops():
    from PIL import Image

    img = Image.new("RGB", (400, 200), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 100, 200))  # left quarter white: cut by the centre crop
    arr = prepare_image(img, {"input_size": 64, "resize_size": 80, "interpolation": "bilinear"})
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    assert arr.max() == 0  # the crop keeps the centre 160 of 400 source columns


def test_embed_paths_skips_bad_files(home, tmp_path, embedder):
    good = write_originals(tmp_path, ["coffee", "camera"])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    vecs, skipped = embedder.embed_paths([good[0], bad, tmp_path / "missing.png", good[1]])
    assert vecs.shape == (2, embedder.dim)
    assert [s["path"] for s in skipped] == [str(bad), str(tmp_path / "missing.png")]
    assert "not an image" in skipped[0]["reason"] and "no such file" in skipped[1]["reason"]


def test_runtimes_agree_and_gem_pooling(home, embedder):
    emb = embedder
    imgs = [photo("astronaut"), photo("coins")]
    torch_emb = load_embedder(runtime="torch")
    assert torch_emb.runtime == "torch"
    if emb.runtime == "onnx":  # onnxruntime installed: the cached export matches PyTorch
        assert np.allclose(emb.embed_images(imgs), torch_emb.embed_images(imgs), atol=1e-4)
    gem = load_embedder(pooling="gem", runtime="torch")
    g = gem.embed_images(imgs)
    assert np.allclose(np.linalg.norm(g, axis=1), 1, atol=1e-5)
    assert not np.allclose(g, torch_emb.embed_images(imgs), atol=1e-3)
    assert gem.describe()["pooling"] == "gem"
    with pytest.raises(LookalikeError, match="pooling"):
        load_embedder(pooling="max")
    with pytest.raises(LookalikeError, match="unknown model"):
        load_embedder("no_such_net")
    with pytest.raises(LookalikeError, match="checkpoint"):
        load_embedder("fast")  # a CIFAR net: only its trained checkpoint is a backbone


def test_onnx_fallback_without_onnxruntime(home, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    assert load_embedder(runtime="auto").runtime == "torch"
    with pytest.raises(LookalikeError, match="onnxruntime"):
        load_embedder(runtime="onnx")


def test_checkpoint_as_backbone(home, tmp_path):
    from lookalike.models import create_model
    from lookalike.train.checkpoint import save_checkpoint

    model = create_model("fast")
    meta = {"model": "fast", "model_kwargs": {}, "classes": [str(i) for i in range(10)],
            "mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26], "input_size": 32, "epoch": 1}
    path = tmp_path / "best.pt"
    save_checkpoint({"meta": meta, "model_state": model.state_dict()}, path)
    emb = load_embedder(str(path))
    assert emb.runtime == "torch" and emb.preprocess["input_size"] == 32 and emb.dim == model.num_features
    v = emb.embed_images([photo("coffee"), photo("camera")])
    assert v.shape == (2, model.num_features) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    folder = tmp_path / "p"
    write_originals(folder, ["coffee", "camera"])
    summary = index_folder(folder, tmp_path / "ix", model=str(path))
    assert summary["added"] == 2
    with ImageIndex.open(tmp_path / "ix") as ix:
        assert ix.manifest["model"] == str(path.resolve()) and ix.manifest["dim"] == model.num_features
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LookalikeError):
        load_embedder(str(broken))


def test_incremental_add_change_delete_rename_copy(home, tmp_path, embedder):
    folder = tmp_path / "photos"
    write_originals(folder, ["astronaut", "camera", "coffee", "rocket"])
    emb = embedder
    first = index_folder(folder, embedder=emb, batch_size=3)
    assert (first["added"], first["indexed"], first["skipped"]) == (4, 4, [])
    index_path = first["index_path"]
    with ImageIndex.open(index_path) as ix:
        before = {ix.path_of(int(i)).name: (int(i), v.copy()) for i, v in zip(ix.ids(), ix.vectors())}

    again = index_folder(folder, embedder=emb)
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 4)

    (folder / "coffee.jpg").write_bytes(jpeg_bytes(photo("chelsea")))  # changed content
    os.rename(folder / "rocket.jpg", folder / "sub-rocket.jpg")  # renamed
    (folder / "camera.jpg").unlink()  # deleted
    shutil.copy(folder / "astronaut.jpg", folder / "astronaut-copy.jpg")  # copied
    (folder / "new").mkdir()
    (folder / "new" / "coins.jpg").write_bytes(jpeg_bytes(photo("coins")))  # added
    st = (folder / "astronaut.jpg").stat()
    os.utime(folder / "astronaut.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes

    s = index_folder(folder, embedder=emb)
    assert s["added"] == 2 and s["updated"] == 1 and s["renamed"] == 1 and s["removed"] == 1
    assert s["unchanged"] == 1 and s["indexed"] == 5
    with ImageIndex.open(index_path) as ix:
        names = {ix.path_of(int(i)).relative_to(folder.resolve()).as_posix(): (int(i), v)
                 for i, v in zip(ix.ids(), ix.vectors())}
    assert set(names) == {"astronaut.jpg", "astronaut-copy.jpg", "coffee.jpg", "sub-rocket.jpg", "new/coins.jpg"}
    rid, rvec = names["sub-rocket.jpg"]
    assert rid == before["rocket.jpg"][0] and np.array_equal(rvec, before["rocket.jpg"][1])  # reused, same id
    assert np.array_equal(names["astronaut-copy.jpg"][1], before["astronaut.jpg"][1])
    assert not np.allclose(names["coffee.jpg"][1], before["coffee.jpg"][1])
    chelsea = emb.embed_images([photo("chelsea")])[0]
    assert float(names["coffee.jpg"][1] @ chelsea) > 0.95


def test_bad_files_are_skipped_and_named(home, tmp_path, embedder):
    from PIL import Image

    folder = tmp_path / "mixed"
    write_originals(folder, ["coffee"])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"just some text")
    data = jpeg_bytes(photo("rocket"))
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                                      + chunk(b"IEND", b""))
    Image.new("CMYK", (64, 64), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    Image.new("RGBA", (64, 64), (0, 0, 255, 128)).save(folder / "rgba.png")
    Image.new("I;16", (64, 64), 40000).save(folder / "gray16.png")
    Image.new("RGB", (64, 64), (9, 9, 9)).convert("P").save(folder / "palette.gif")
    s = index_folder(folder, embedder=embedder)
    skipped = {os.path.basename(x["path"]): x["reason"] for x in s["skipped"]}
    assert set(skipped) == {"empty.jpg", "text.png", "truncated.jpg", "bomb.png"}
    assert "empty" in skipped["empty.jpg"] and "not an image" in skipped["text.png"]
    assert "truncated" in skipped["truncated.jpg"] and "pixel" in skipped["bomb.png"]
    assert s["indexed"] == 5  # coffee + four converted modes


def _failures(index_path) -> dict:
    ix = ImageIndex.open(index_path, readonly=False)
    try:
        return ix.failures()
    finally:
        ix.close()


def test_failed_files_are_remembered_until_changed_or_deleted(home, tmp_path, embedder):
    folder = tmp_path / "mixed"
    write_originals(folder, ["coffee", "camera"])
    (folder / "text.png").write_bytes(b"just some text")
    data = jpeg_bytes(photo("rocket"))
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    emb = embedder
    first = index_folder(folder, embedder=emb)
    assert first["indexed"] == 2 and first["skipped_known"] == 0
    reasons = {os.path.basename(x["path"]): x["reason"] for x in first["skipped"]}
    assert set(reasons) == {"text.png", "truncated.jpg"}
    index_path = first["index_path"]
    assert {rel: f[2] for rel, f in _failures(index_path).items()} == reasons

    totals = []
    again = index_folder(folder, embedder=emb, progress=lambda done, total: totals.append(total))
    assert totals == [0]  # nothing left to decode: the two bad files were not read again
    assert (again["unchanged"], again["skipped_known"], again["added"]) == (2, 2, 0)
    assert sorted(again["skipped"], key=lambda x: x["path"]) == [
        {"path": str(folder.resolve() / name), "reason": f"{reasons[name]} (unchanged since it failed)"}
        for name in ("text.png", "truncated.jpg")]

    st = (folder / "truncated.jpg").stat()  # touched: decoded again, still bad, remembered with the new mtime
    os.utime(folder / "truncated.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    (folder / "text.png").write_bytes(jpeg_bytes(photo("coins")))  # fixed (a PNG name on JPEG bytes decodes)
    (folder / "coffee.jpg").write_bytes(b"overwritten")  # an indexed file turned bad
    third = index_folder(folder, embedder=emb)
    assert (third["added"], third["removed"], third["indexed"], third["skipped_known"]) == (1, 1, 2, 0)
    assert {os.path.basename(x["path"]) for x in third["skipped"]} == {"truncated.jpg", "coffee.jpg"}
    failures = _failures(index_path)
    assert set(failures) == {"truncated.jpg", "coffee.jpg"}
    assert failures["truncated.jpg"][1] == st.st_mtime_ns + 10**9
    with ImageIndex.open(index_path) as ix:
        assert ix.id_of(folder / "text.png") is not None and ix.id_of(folder / "coffee.jpg") is None

    (folder / "truncated.jpg").unlink()  # deleted: forgotten
    fourth = index_folder(folder, embedder=emb)
    assert [os.path.basename(x["path"]) for x in fourth["skipped"]] == ["coffee.jpg"]
    assert fourth["skipped_known"] == 1 and set(_failures(index_path)) == {"coffee.jpg"}

    rebuilt = index_folder(folder, embedder=emb, rebuild=True)  # starts over: every file is tried again
    assert rebuilt["skipped_known"] == 0 and rebuilt["added"] == 2
    assert [os.path.basename(x["path"]) for x in rebuilt["skipped"]] == ["coffee.jpg"]


def test_failed_files_are_tried_again_by_an_upgraded_decoder(home, tmp_path, monkeypatch, embedder):
    import lookalike.search.indexing.sync as sync

    folder = tmp_path / "mixed"
    write_originals(folder, ["coffee"])
    (folder / "text.png").write_bytes(b"just some text")
    emb = embedder
    assert index_folder(folder, embedder=emb)["skipped_known"] == 0
    assert index_folder(folder, embedder=emb)["skipped_known"] == 1  # same decoder: not read again
    monkeypatch.setattr(sync, "decoder_version", lambda: "lookalike 9.9, Pillow 99.0")
    totals = []
    upgraded = index_folder(folder, embedder=emb, progress=lambda done, total: totals.append(total))
    assert totals == [1, 1] and upgraded["skipped_known"] == 0  # the new decoder tried it, and failed too
    assert [os.path.basename(x["path"]) for x in upgraded["skipped"]] == ["text.png"]
    assert set(_failures(upgraded["index_path"])) == {"text.png"}
    assert index_folder(folder, embedder=emb)["skipped_known"] == 1  # remembered again, for the new decoder


def test_refuses_to_mix_backbones(home, tmp_path, embedder):
    folder = tmp_path / "p"
    write_originals(folder, ["coffee", "camera"])
    index_folder(folder, embedder=embedder)
    with pytest.raises(LookalikeError, match="--rebuild"):
        index_folder(folder, pooling="gem", runtime="torch")
    s = index_folder(folder, pooling="gem", runtime="torch", rebuild=True)
    assert s["added"] == 2
    with ImageIndex.open(folder) as ix:
        assert ix.manifest["pooling"] == "gem"
    assert index_folder(folder, runtime="torch")["unchanged"] == 2  # no options: keeps the index's backbone
    with pytest.raises(LookalikeError, match="not a folder"):
        index_folder(tmp_path / "missing")


KILLER = textwrap.dedent("""
    import os, signal, sys
    from lookalike.search.indexing.sync import index_folder
    batches = []
    def progress(done, total):
        batches.append(done)
        if len(batches) == 4:  # three batches committed: die without any clean-up
            os.kill(os.getpid(), signal.SIGKILL)
    index_folder(sys.argv[1], sys.argv[2], batch_size=4, progress=progress)
""")


def many_photos(folder):
    """24 distinct images: shifted crops make distinct bytes and vectors."""
    write_originals(folder, ["astronaut", "camera", "coffee", "rocket"])
    for i in range(20):
        img = photo(["astronaut", "camera", "coffee", "rocket"][i % 4])
        (folder / f"v{i:02d}.jpg").write_bytes(jpeg_bytes(img.crop((i, i, img.width - 20 + i, img.height - 20)), 85))
    return folder


def index_in_a_child(script: str, tmp_path: Path, home: Path):
    """`many_photos` indexed by `script` in a fresh process: (the finished process, the folder, the index)."""
    folder = many_photos(tmp_path / "many")
    ix_path = tmp_path / "ix"
    env = {**os.environ, "LOOKALIKE_HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", script, str(folder), str(ix_path)], env=env,
                          capture_output=True, text=True, timeout=300, **INTERRUPTIBLE)
    return proc, folder, ix_path


def test_kill_9_then_resume(home, tmp_path, embedder):
    proc, folder, ix_path = index_in_a_child(KILLER, tmp_path, home)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with ImageIndex.open(ix_path) as ix:  # readable after the kill, holding the committed batches
        assert len(ix) == 12
        assert np.allclose(np.linalg.norm(ix.vectors(), axis=1), 1, atol=1e-5)
    s = index_folder(folder, ix_path, embedder=embedder)
    assert (s["unchanged"], s["added"], s["indexed"]) == (12, 12, 24)
    with ImageIndex.open(ix_path) as ix:
        assert len({ix.path_of(int(i)) for i in ix.ids()}) == 24
    manifest = json.loads((ix_path / "manifest.json").read_text())
    assert manifest["count"] == 24


CTRL_C = textwrap.dedent("""
    import os, signal, sys
    import lookalike.search.indexing.sync as S
    from lookalike.cli import main
    real_sync = S._sync
    def sync(index, root, embedder, batch_size, progress, *rest):
        calls = []
        def interrupting(done, total):
            progress(done, total)
            calls.append(done)
            if len(calls) == 3:  # two batches committed: the user presses Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
        return real_sync(index, root, embedder, batch_size, interrupting, *rest)
    S._sync = sync
    sys.argv = ["lookalike", "index", sys.argv[1], "--index", sys.argv[2], "--batch-size", "4"]
    main()
""")


def test_ctrl_c_then_resume(home, tmp_path, embedder):
    proc, folder, ix_path = index_in_a_child(CTRL_C, tmp_path, home)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "interrupted"
    with ImageIndex.open(ix_path) as ix:
        assert len(ix) == 8
    s = index_folder(folder, ix_path, embedder=embedder)
    assert (s["unchanged"], s["added"], s["indexed"]) == (8, 16, 24)
