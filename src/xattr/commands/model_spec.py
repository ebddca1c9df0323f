"""``--model``: a conf/model name, a local checkpoint directory, or ``FAMILY:PATH``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONF_MODELS = Path(__file__).resolve().parents[1] / "conf" / "model"  # shipped in the package
DEFAULT_MODEL = "toy_qwen2_5_vl"


class ModelSpecError(ValueError):
    """A ``--model`` value that names no model this command can load."""


def conf_names() -> list[str]:
    """The model configs in ``conf/model/`` (e.g. ``qwen2_5_vl_7b``), sorted."""
    return sorted(p.stem for p in CONF_MODELS.glob("*.yaml")) if CONF_MODELS.is_dir() else []


def resolve(spec: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `xattr.models.load` (family, path, dtype, device) for ``spec``.

    ``overrides`` that are not None (e.g. ``device="cpu"``) replace the config's values.
    """
    from .. import models

    kwargs: dict[str, Any]
    family, sep, rest = spec.partition(":")
    if spec in conf_names():  # shipped with the package, the toys' configs included
        kwargs = _conf(CONF_MODELS / f"{spec}.yaml")
    elif Path(spec).expanduser().is_dir():
        kwargs = {"path": str(Path(spec).expanduser())}
    elif sep and family in models.available():
        kwargs = {"family": family, "path": rest}
    else:
        raise ModelSpecError(
            f"unknown model {spec!r}: not a conf/model name ({', '.join(conf_names()) or 'none'}), "
            f"not a local checkpoint directory, not FAMILY:PATH "
            f"(families: {', '.join(models.available())})"
        )
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return kwargs


def _conf(path: Path) -> dict[str, Any]:
    """A conf/model yaml as load() keywords (its resolvers, e.g. ``${xattr.toy:...}``, resolved)."""
    from omegaconf import OmegaConf

    from ..pipeline.run import register_resolvers

    register_resolvers()
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(values, dict)
    values.pop("_target_", None)
    return {str(k): v for k, v in values.items()}
