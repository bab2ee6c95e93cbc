"""Quality presets: `--quality default|high` of `lookalike index`, `search`, `serve` and `eval-search`.

A preset names the descriptor an index records and the way a search ranks with it; an option given explicitly
overrides the preset's value for that option. A leaf module, light enough for `lookalike --help` to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import LookalikeError


@dataclass(frozen=True)
class Preset:
    """The options one `--quality` value stands for, spelled as the command-line options take them."""

    # The descriptor, recorded in the index (`lookalike index`).
    size: int  # the whole photo with this many pixels on its longer side; 0: the backbone's centre crop
    scales: Optional[str]  # factors of `size` whose descriptors are summed, e.g. "1,1.25"; None: one scale
    pooling: str
    layers: Optional[str]  # None: the backbone's own default (`features.parse_layers` reads the others)
    whiten: bool  # PCA-whitening fitted on the indexed vectors
    # The ranking (`lookalike search`, `serve`, `eval-search`).
    qe: int  # neighbours of alpha-query expansion (0: off)
    dba: int  # neighbours of database-side augmentation (0: off)
    verify: int  # results re-ranked by spatial verification (0: off)
    verify_detail: str = "fast"  # `verify.DETAILS`: the index's stored local features, or every image at 512 px

    def descriptor_options(self) -> dict:
        """The descriptor options by their command-line names (`--size` etc.), for a command that builds one."""
        return {"size": self.size, "scales": self.scales, "pooling": self.pooling, "layers": self.layers,
                "whiten": self.whiten}


PRESETS: dict[str, Preset] = {
    # The 224-pixel centre crop, average pooling, no whitening; the first 20 results verified (as
    # `verify.DEFAULT_SHORTLIST`, which a test keeps equal).
    "default": Preset(size=0, scales=None, pooling="avg", layers=None, whiten=False, qe=0, dba=0, verify=20),
    # The whole photo at 416 and 520 pixels, R-MAC of the head's feature map, PCA-whitening, one neighbour of
    # query expansion and of database-side augmentation, the first 30 results verified at 512 px: slower to index
    # and to search, more accurate (benchmarks/results/eval_search.md).
    "high": Preset(size=416, scales="1,1.25", pooling="rmac", layers="head", whiten=True, qe=1, dba=1, verify=30,
                   verify_detail="full"),
}

QUALITY_NAMES = tuple(PRESETS)


def preset(name: str) -> Preset:
    """The preset called `name`; a `LookalikeError` naming the choices for any other value."""
    try:
        return PRESETS[name]
    except KeyError:
        raise LookalikeError(f"unknown --quality {name!r}: use {' or '.join(QUALITY_NAMES)}") from None


def pick(explicit, preset_value):
    """An option's value: the one given on the command line, else the preset's."""
    return preset_value if explicit is None else explicit
