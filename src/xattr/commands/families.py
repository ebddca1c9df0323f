"""The family table (README, ``xattr list --families``), generated from the family registry.

A row per registered adapter: its family and checkpoint ``model_types``, the conf/model files
that load it, the methods it runs (every registered method but those it refuses, and
perturbation methods only where it has the pixel-mask path), and its `FamilyCard`'s prose.
"""

from __future__ import annotations

from .model_spec import CONF_MODELS

HEADER = (
    "| family | checkpoint config | inputs | visual tokens | methods | tested rules | caveats |\n"
    "|---|---|---|---|---|---|---|"
)
START, END = "<!-- family-table:start -->", "<!-- family-table:end -->"  # README markers


def configs_by_family() -> dict[str, list[str]]:
    """conf/model names per family they load (the ``family`` key of each yaml, unresolved)."""
    from omegaconf import OmegaConf

    found: dict[str, list[str]] = {}
    for path in sorted(CONF_MODELS.glob("*.yaml")):
        family = OmegaConf.load(path).get("family")
        if family:
            found.setdefault(str(family), []).append(path.stem)
    return found


def family_methods(family: str | type) -> tuple[list[str], list[str]]:
    """(the registered methods ``family`` (a name or an adapter class) runs, those it does
    not), by name."""
    from .. import methods, models
    from ..models.pixels import family_has_pixel_path

    cls = models.ADAPTERS.get_class(family) if isinstance(family, str) else family
    runs, refused = [], []
    for name in methods.available():
        perturbs = methods.get(name).needs.model  # blends the image: needs the pixel-mask path
        ok = name not in cls.refused_methods and (family_has_pixel_path(cls) or not perturbs)
        (runs if ok else refused).append(name)
    return runs, refused


def family_inputs(cls: type) -> str:
    """What one prompt of the family may show: one image, several, and a video (read off the
    adapter: ``max_images`` and whether it overrides ``prepare_video``)."""
    from ..models.prompting import reads_video

    several = cls.max_images is None or cls.max_images > 1  # type: ignore[attr-defined]
    return ("images" if several else "one image") + (", video" if reads_video(cls) else "")


def family_table() -> str:
    """The family table as Markdown, one row per registered family, sorted by name."""
    from .. import models

    configs = configs_by_family()
    rows = [HEADER]
    for family in models.available():
        cls = models.ADAPTERS.get_class(family)
        others = [t for t in cls.model_types if t != family]
        name = f"`{family}`" + "".join(f" (+ `{t}`)" for t in others)
        _, refused = family_methods(family)
        runs = "all" if not refused else "all but " + ", ".join(f"`{m}`" for m in refused)
        card = cls.__dict__.get("card")  # its own: a subclass's row is not its parent's
        cells = [
            name,
            ", ".join(f"`{c}`" for c in configs.get(family, [])) or "—",
            family_inputs(cls),
            card.visual_tokens if card else "—",
            runs,
            card.tested if card else "—",
            (card.caveats if card else "") or "—",
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def with_table(readme: str) -> str:
    """``readme`` with the text between the family-table markers replaced by `family_table`."""
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"the README has no {START} ... {END} markers")
    return f"{head}{START}\n{family_table()}\n{END}{tail}"
