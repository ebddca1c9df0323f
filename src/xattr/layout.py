"""Where the visual tokens are: grids of tokens, each covering a box of one input image.

A model may cut one image into several grids: a base view plus tiles (LLaVA-NeXT), tiles
plus a thumbnail or global view (InternVL, Idefics3), a base image plus pan-and-scan crops
(Gemma 3). Every visual token belongs to exactly one grid; a grid of ``rows x cols`` tokens
in raster order covers a box of its image, given as fractions of the *original* image
``(top, left, bottom, right)``. Separator tokens (row breaks, tile tags, newline features)
are not visual tokens and appear in no grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .images import FULL_IMAGE, Region


class LayoutError(ValueError):
    """Visual tokens and grids that do not describe each other."""


@dataclass(frozen=True)
class Grid:
    """``rows x cols`` visual tokens in raster order over ``box`` of image ``image`` (for a
    video: of the frames ``frames``, which the model reads as one input, e.g. a frame pair)."""

    rows: int
    cols: int
    image: int = 0
    box: Region = FULL_IMAGE
    name: str = "image"  # e.g. "base", "tile 1,2", "thumbnail", "crop 2"
    frames: tuple[int, int] | None = None  # a video's frames [first, end) this grid shows

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def cell_area(self) -> float:
        """Area of one token's cell as a fraction of the original image's area."""
        top, left, bottom, right = self.box
        return (bottom - top) * (right - left) / self.cells

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "cols": self.cols,
            "image": self.image,
            "box": list(self.box),
            "name": self.name,
            **({"frames": list(self.frames)} if self.frames is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Grid:
        return cls(
            int(data["rows"]),
            int(data["cols"]),
            int(data.get("image", 0)),
            tuple(float(x) for x in data.get("box", FULL_IMAGE)),  # type: ignore[arg-type]
            str(data.get("name", "image")),
            tuple(int(f) for f in data["frames"]) if data.get("frames") is not None else None,  # type: ignore[arg-type]
        )


def as_grids(grids: Sequence[Grid | tuple[int, int]] | tuple[int, int]) -> tuple[Grid, ...]:
    """Grids from `Grid` objects, or ``(rows, cols)`` pairs (the i-th pair: image i, whole
    image), or one pair."""
    if len(grids) == 2 and all(isinstance(g, int) for g in grids):
        grids = [grids]  # type: ignore[list-item]
    out = []
    for i, g in enumerate(grids):
        out.append(g if isinstance(g, Grid) else Grid(int(g[0]), int(g[1]), image=i))  # type: ignore[index]
    return tuple(out)


def canvas_grid(grids: Sequence[Grid], image: int = 0) -> Grid:
    """One grid over everything image ``image``'s grids cover, at the finest grid's density.

    Its box is the bounding box of theirs (not clipped: a padded canvas may pass the image);
    along each axis it holds as many cells as the densest grid would over that box
    (``round(max rows / box height * canvas height)``), so tiles of a canvas and crops are
    whole blocks of its cells and a coarser grid (a thumbnail) is read at its cells' centres.
    One grid alone is its own canvas. Used to rank cells of the whole image (faithfulness).
    """
    mine = [g for g in grids if g.image == image]
    if not mine:
        raise LayoutError(f"no token grid covers image {image}")
    if len(mine) == 1:
        return Grid(mine[0].rows, mine[0].cols, image, mine[0].box, "canvas")
    top = min(g.box[0] for g in mine)
    left = min(g.box[1] for g in mine)
    bottom = max(g.box[2] for g in mine)
    right = max(g.box[3] for g in mine)
    rows = max(g.rows / (g.box[2] - g.box[0]) for g in mine) * (bottom - top)
    cols = max(g.cols / (g.box[3] - g.box[1]) for g in mine) * (right - left)
    return Grid(
        max(1, round(rows)), max(1, round(cols)), image, (top, left, bottom, right), "canvas"
    )


@dataclass(frozen=True)
class VisualLayout:
    """The visual tokens of a sequence: positions, grid after grid, raster order in each."""

    positions: Tensor  # [|V|] sequence positions of the visual tokens
    grids: tuple[Grid, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", torch.as_tensor(self.positions, dtype=torch.long))
        object.__setattr__(self, "grids", as_grids(self.grids))
        cells = sum(g.cells for g in self.grids)
        if cells != self.positions.numel():
            raise LayoutError(
                f"grids {[g.shape for g in self.grids]} hold {cells} cells but there are "
                f"{self.positions.numel()} visual tokens"
            )

    @property
    def num_images(self) -> int:
        return 1 + max((g.image for g in self.grids), default=-1)

    def slices(self) -> list[slice]:
        """Each grid's slice of the visual tokens."""
        out, start = [], 0
        for g in self.grids:
            out.append(slice(start, start + g.cells))
            start += g.cells
        return out

    def split(self, values: Tensor) -> list[Tensor]:
        """Values over V ``[..., |V|]`` cut into one ``[..., rows, cols]`` map per grid."""
        return [
            values[..., s].reshape(*values.shape[:-1], g.rows, g.cols)
            for g, s in zip(self.grids, self.slices(), strict=True)
        ]
