"""Build a run from a composed Hydra config and execute it (the body of train_free_eval.py)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .searchpath import register_plugin_configs

log = logging.getLogger(__name__)


def _toy_checkpoint(family: str) -> str:
    from ..toy import checkpoint

    return str(checkpoint(family))


def _wandb_offline() -> bool:
    """Offline unless an API key is configured (env var or a netrc entry)."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def register_resolvers() -> None:
    """What Hydra needs from xattr before it composes a config: the resolvers
    ``${xattr.toy:qwen2_5_vl}`` (shipped checkpoint dir), ``${xattr.wandb_offline:}`` and
    ``${xattr.cwd:}`` (the launch directory; ``${hydra:runtime.cwd}`` fails in a multirun,
    whose sweep directory is resolved before Hydra's per-job config exists), and every
    registered method's schema (`register_method_schemas`)."""
    if not OmegaConf.has_resolver("xattr.cwd"):
        OmegaConf.register_new_resolver("xattr.cwd", os.getcwd)
    if not OmegaConf.has_resolver("xattr.toy"):
        OmegaConf.register_new_resolver("xattr.toy", _toy_checkpoint)
    if not OmegaConf.has_resolver("xattr.wandb_offline"):
        OmegaConf.register_new_resolver("xattr.wandb_offline", _wandb_offline)
    register_method_schemas()
    register_metric_configs()


def register_metric_configs() -> None:
    """Store ``metrics/<name>`` for every registered metric, so ``metrics=[nss,faithfulness]``
    picks metrics one by one (with their class defaults) beside the presets in conf/metrics/
    (``default``, ``agreement``, ``all``); a map metric lands in ``metrics.map``, a
    model-in-the-loop one in ``metrics.model``."""
    from hydra.core.config_store import ConfigStore

    from .. import metrics

    store = ConfigStore.instance()
    in_the_loop = metrics.model_metric_columns()
    for name, cls in metrics.METRICS.items():
        if name in in_the_loop:
            node, package = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}, "model"
        else:
            node, package = {}, "map"
        store.store(group="metrics", name=name, node=node, package=f"metrics.{package}.{name}")


def method_schema(cls: type) -> DictConfig:
    """A method class as a config node: ``_target_`` and every hyper-parameter's default."""
    return OmegaConf.create(
        {"_target_": f"{cls.__module__}.{cls.__qualname__}", **cls.defaults()}  # type: ignore[attr-defined]
    )


def register_method_schemas() -> None:
    """Store ``xattr/method/<name>`` in Hydra's ConfigStore for every registered method, so a
    method's yaml (``defaults: [/xattr/method/<name>@_here_]``) states no default of its own:
    they come from the class's declared hyper-parameters."""
    from hydra.core.config_store import ConfigStore

    from ..methods import METHODS

    store = ConfigStore.instance()
    for name, cls in METHODS.items():
        store.store(group="xattr/method", name=name, node=method_schema(cls))


def instantiate(cfg: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising the underlying error (it names the bad path or name)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(cfg, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (FileNotFoundError, KeyError, ValueError, TypeError, ImportError)):
            raise cause from None
        raise


class ConfigError(ValueError):
    """A configured value that cannot run (named, with its rule): one line, nothing written."""


@contextlib.contextmanager
def config_errors(*kinds: type[Exception]) -> Iterator[None]:
    """Turn the errors a bad configured value raises (``kinds``; by default those of our own
    validation of data, methods and metrics) into one `ConfigError`."""
    from ..registry import UnknownNameError

    caught = kinds or (UnknownNameError, FileNotFoundError, ValueError, TypeError)
    try:
        yield
    except ConfigError:
        raise
    except caught as err:
        raise ConfigError(str(err)) from err


def model_config_errors() -> tuple[type[Exception], ...]:
    """What loading a model raises for a bad configured value (anything else, from deep in
    transformers, keeps its traceback)."""
    from ..models import CaptureError
    from ..models.placement import PlacementError
    from ..registry import UnknownNameError

    return (UnknownNameError, FileNotFoundError, PlacementError, CaptureError)


def check_placement(model_cfg: Any) -> None:
    """The model config's device and dtype, checked before the model loads."""
    from ..models.placement import check_device, torch_dtype

    check_device(model_cfg.get("device", "cpu"))
    torch_dtype(model_cfg.get("dtype", "float32"))


def check_layer_subsets(methods: dict[str, Any], num_layers: int) -> None:
    """Each method's layer-subset hyper-parameters resolved against the model's layer count."""
    from ..methods.propagation import is_layer_subset, select_layers

    for name, method in methods.items():
        for f in method.hparam_fields():
            if f.metadata.get("check") is is_layer_subset:
                try:
                    select_layers(num_layers, getattr(method, f.name))
                except ValueError as err:
                    raise ConfigError(
                        f"{name}: {f.name} {getattr(method, f.name)!r}: {err}"
                    ) from None


def build_metrics(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Map metrics by name (``cfg.map``) and model-in-the-loop metrics (``cfg.model``)."""
    from .. import metrics

    in_the_loop = metrics.model_metric_columns()
    for name in cfg.get("map") or {}:
        if name in in_the_loop:
            raise ValueError(
                f"{name} puts the model in the loop: list it under metrics.model "
                f"(metrics=[{name}] adds it there), not metrics.map"
            )
    map_metrics = {
        name: metrics.get(name, **(opts or {})) for name, opts in (cfg.get("map") or {}).items()
    }
    model_metrics = {
        name: instantiate(c) for name, c in (cfg.get("model") or {}).items() if c is not None
    }
    return map_metrics, model_metrics


def _record_configuration(cfg: DictConfig, run_dir: Path) -> dict[str, str]:
    """Write fingerprints.json; say which settings changed since an earlier run in ``run_dir``."""
    from .fingerprint import changes, read_fingerprints, row_configs, write_fingerprints
    from .results import load_rows

    configs = row_configs(cfg)
    earlier = read_fingerprints(run_dir)
    rows = load_rows(run_dir, fingerprints={})
    if earlier is None and rows:
        log.warning(
            "%s holds rows without a configuration record (an older xattr): they are recomputed",
            run_dir,
        )
    for method, config in configs.items():
        had_rows = earlier and method in earlier and any(r["method"] == method for r in rows)
        if had_rows and (diff := changes(earlier[method]["config"], config)):
            log.warning(
                "%s: configuration changed since its rows in %s were scored, so they are "
                "recomputed: %s",
                method,
                run_dir,
                "; ".join(diff),
            )
    return write_fingerprints(run_dir, configs)


def _wandb_location(logger: Any) -> str:
    """One line saying where the W&B run is (wandb's own banner is silenced)."""
    run = getattr(logger, "_experiment", None)
    if run is None:
        return ""
    if getattr(run.settings, "_offline", False) or run.settings.mode == "offline":
        folder = Path(run.dir).parent
        return f"W&B run (offline): {folder}; upload it with `wandb sync {folder}`"
    return f"W&B run: {run.url}"


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate the configured methods and metrics; returns the summary (and writes it)."""
    import lightning as L
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .evaluator import SampleEvaluator
    from .module import ExplainEvalModule, XattrProgressBar
    from .quiet import quiet_libraries, quiet_logger
    from .results import read_summary

    quiet_libraries()
    L.seed_everything(cfg.get("seed", 0), verbose=False)
    if cfg.get("num_threads"):
        import torch

        torch.set_num_threads(int(cfg.num_threads))
    run_dir = Path(cfg.paths.output_dir)
    # everything that can fail on a bad path, name or value fails here, before the model
    # loads; the layer subsets are checked against the model; only then is anything written
    with config_errors():
        datamodule = instantiate(cfg.data)
        _ = datamodule.dataset
        methods = {name: instantiate(mcfg) for name, mcfg in cfg.method.items()}
        if not methods:
            raise ValueError("no method selected: pass method=glimpse or method=[glimpse,tmme]")
        map_metrics, model_metrics = build_metrics(cfg.metrics)
        check_placement(cfg.model)
    with config_errors(*model_config_errors()):
        adapter = instantiate(cfg.model)
    check_layer_subsets(methods, len(adapter.attention_modules()))
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    fingerprints = _record_configuration(cfg, run_dir)

    explain_cfg = cfg.get("explain") or {}
    evaluator = SampleEvaluator(
        adapter,
        methods,
        map_metrics,
        model_metrics,
        answer=cfg.get("answer", "generated"),
        target=explain_cfg.get("target"),
        contrast=explain_cfg.get("contrast"),
        visual_dependence=bool(explain_cfg.get("visual_dependence", False)),
    )
    loggers = [
        quiet_logger(instantiate(c)) for c in (cfg.get("logger") or {}).values() if c is not None
    ]
    # limits of methods not selected in this run are ignored
    limits = {k: int(v) for k, v in (cfg.get("method_limits") or {}).items() if k in methods}
    module = ExplainEvalModule(
        evaluator,
        run_dir=run_dir,
        overlays=cfg.get("overlays", 3),
        method_limits=limits,
        fingerprints=fingerprints,
        save_explanations=bool(cfg.get("save_explanations", False)),
    )
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[XattrProgressBar()])
    try:
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        with logging_redirect_tqdm():  # log lines above the bar, never inside its line
            trainer.test(module, datamodule=datamodule, verbose=False)
    finally:
        for logger in loggers:
            if hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
                import wandb

                where = _wandb_location(logger)
                wandb.finish()
                if where and trainer.global_rank == 0:
                    print(where)
    # read back from disk: with a spawning strategy the module above ran in other processes
    summary = read_summary(run_dir)
    if trainer.global_rank == 0:
        print(f"\nResults ({run_dir}):\n\n{(run_dir / 'results.md').read_text()}")
        session = summary["this_session"]
        if session.get("rows_resumed") or session.get("rows_recomputed"):
            print(
                f"Resumed {session['rows_resumed']} rows already in {run_dir}; recomputed "
                f"{session['rows_recomputed']} whose configuration had changed.\n"
            )
    if not summary["samples"] and summary["skipped_samples"]:
        raise RuntimeError(
            f"every sample failed ({summary['skipped_samples']} skipped): "
            f"the reasons are under the table and in {run_dir / 'skipped.jsonl'}"
        )
    return summary


# a launcher that unpickles the task in a fresh process (submitit) imports this module first
register_resolvers()
register_plugin_configs()  # plugin packages' conf/ folders (entry-point group xattr.conf)
