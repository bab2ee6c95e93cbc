"""The content digest of the file a descriptor's weights come from (a `lookalike train` checkpoint, or a
`--weights` file): an index records it, so weights replaced under the same path are noticed instead of
mixing vectors of two networks in one index."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ...errors import LookalikeError

MANIFEST_KEY = "model_digest"


def is_checkpoint_ref(model: str) -> bool:
    """A `--model` value naming a file (a `lookalike train` checkpoint) rather than a registered backbone."""
    return model.endswith((".pt", ".pth", ".ckpt")) or os.sep in model or Path(model).is_file()


def weights_file(model: str, weights: str | None) -> Path | None:
    """The file whose bytes decide the network's weights: the checkpoint `model` names, else `weights`."""
    for ref in ((model if is_checkpoint_ref(model) else None), weights):
        if ref and Path(ref).expanduser().is_file():
            return Path(ref).expanduser().resolve()
    return None


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex), read a MiB at a time: weights files, and the index's whitening."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_of(model: str, weights: str | None) -> str | None:
    """sha256 of the weights file of `model`/`weights`, None for weights that come with a package."""
    path = weights_file(model, weights)
    if path is None:
        return None
    try:
        return file_sha256(path)
    except OSError as exc:
        raise LookalikeError(f"cannot read {path} ({exc.strerror or exc})") from None


def check_unchanged(manifest: dict, digest: str | None, index_path, *, rebuild_hint: str) -> None:
    """LookalikeError (one line) when the index records a digest and the weights file now has another."""
    recorded = manifest.get(MANIFEST_KEY)
    if recorded is not None and digest is not None and recorded != digest:
        source = weights_file(str(manifest.get("model")), manifest.get("weights")) or manifest.get("model")
        raise LookalikeError(f"{source} has changed since index {index_path} was built from it (its content digest "
                             f"differs): {rebuild_hint}")
