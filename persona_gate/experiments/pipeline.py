"""The whole analysis as one resumable run: directions -> steering -> re-introduction -> windows -> patching.

Each stage writes its result folder atomically into the run directory and is skipped when that
folder already loads; inside a stage every finished cell (one steering strength at one layer,
one window, one patching pair) is kept under ``cells/<stage>/`` until the stage's folder is
written. A killed run therefore resumes at the cell it stopped in and never recomputes a
finished part; the result is bit-identical to an uninterrupted run. Re-running a folder with a
different configuration is refused (the finished stages would not match it).
``summary.json`` (machine-readable, documented in the README) is written at the end from what
is on disk; :func:`run_pipeline` returns it as a typed
:class:`~persona_gate.experiments.summary.RunSummary`, which also reads like the JSON.

Example::

    cfg = RunConfig(model="organism", n_eval=32)
    summary = run_pipeline(cfg, "runs/organism")
    summary["baseline_refusal_rate"], summary["gate_layers"]      # or summary.gate_layers
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtefactError, ConfigError
from ..io import FolderLock, atomic_write_text, check_claimable, claim_folder, remove_stale_temporaries

if TYPE_CHECKING:  # the summary's types load torch; a config alone does not
    from .summary import RunSummary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; recorded in summary.json."""

    model: str = "organism"
    dtype: str = "float32"
    device: str | None = None
    # "auto": spread a model larger than one device over every GPU, CPU memory and disk (accelerate).
    device_map: str | None = None
    chat_template: str | None = None
    n_fit: int = 96  # requests per group for fitting directions
    n_eval: int = 32  # held-out prompts per group for the experiments
    layers: list[int] | None = None
    alphas: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 4.0])
    alpha_back: float = 1.0
    window_width: int | None = None  # None: every window the gate search needs (paper.window_spans)
    random_seeds: int = 5
    patch_examples: int = 8
    seed: int = 0
    # Evaluate on a public harmful set instead of persona_gate's own test split, e.g.
    # harmful_dataset = "strongreject" with harmful_source = "path/to/strongreject_dataset.csv".
    harmful_dataset: str | None = None
    harmful_source: str | None = None
    # Refusal-start tokens from these phrases; default: derived from the model's own refusals
    # (a base model that never refuses needs phrases).
    refusal_phrases: list[str] | None = None
    # Also compare where the persona direction is read (last token, post-instruction, system /
    # user / response means): its steering and ablation effects per layer (one more stage).
    extraction_sites: bool = False
    # For `run --plan` without the weights: the model's config.json (or a folder holding it, and
    # optionally its tokenizer.json), relative to the config file. The run itself ignores it.
    plan_config: str | None = None

    def __post_init__(self) -> None:
        def bad(key: str, want: str) -> ConfigError:
            return ConfigError(
                f"config key {key!r} must be {want}, got {getattr(self, key)!r}; fix it in the config file."
            )

        num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)  # noqa: E731
        count = lambda x, lo: isinstance(x, int) and not isinstance(x, bool) and x >= lo  # noqa: E731
        for key in ("model", "dtype"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise bad(key, "a non-empty string")
        for key in ("device", "device_map", "chat_template", "harmful_dataset", "harmful_source", "plan_config"):
            if getattr(self, key) is not None and not isinstance(getattr(self, key), str):
                raise bad(key, "a string")
        for key, lo in (("n_fit", 2), ("n_eval", 2), ("random_seeds", 1), ("patch_examples", 1), ("seed", 0)):
            if not count(getattr(self, key), lo):
                raise bad(key, f"an integer >= {lo}")
        if self.window_width is not None and not count(self.window_width, 1):
            raise bad("window_width", "an integer >= 1 (or absent for the full grid)")
        if self.layers is not None and (
            not isinstance(self.layers, (list, tuple)) or not self.layers or not all(count(x, 0) for x in self.layers)
        ):
            raise bad("layers", "a non-empty list of layer indices such as [4, 8, 12]")
        if not isinstance(self.alphas, (list, tuple)) or not self.alphas or not all(num(a) for a in self.alphas):
            raise bad("alphas", "a non-empty list of finite numbers such as [0.0, 2.0, 4.0]")
        if self.device is not None and self.device_map is not None:
            raise ConfigError(
                "config keys 'device' and 'device_map' exclude each other; set one (device_map = \"auto\" for "
                "a model larger than one device)."
            )
        if self.harmful_dataset is not None and self.harmful_dataset not in _LOADERS:
            raise bad("harmful_dataset", f"one of {sorted(_LOADERS)} (or absent for the model's own prompt sets)")
        if not isinstance(self.extraction_sites, bool):
            raise bad("extraction_sites", "true or false")
        if not num(self.alpha_back):
            raise bad("alpha_back", "a finite number")
        if self.refusal_phrases is not None and (
            not isinstance(self.refusal_phrases, (list, tuple))
            or not self.refusal_phrases
            or not all(isinstance(x, str) and x for x in self.refusal_phrases)
        ):
            raise bad("refusal_phrases", 'a non-empty list of strings such as ["I cannot"]')

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> RunConfig:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist; check the path.") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML ({e}); fix the syntax.") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8 TOML.") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a folder; pass the path of a TOML file.") from None
        return cls.from_dict({**raw, **{k: v for k, v in overrides.items() if v is not None}}, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            import difflib

            hints = {k: difflib.get_close_matches(str(k), known, n=1) for k in unknown}
            guess = ", ".join(f"{h[0]!r} for {k!r}" for k, h in hints.items() if h)
            raise ConfigError(
                f"{source} has unknown keys {unknown}{f' (did you mean {guess}?)' if guess else ''}; "
                f"known keys are {sorted(known)}."
            )
        return cls(**raw)

    def plan_model(self, base: str | Path | None = None, device: str | None = None) -> Any:
        """The model a cost plan reads: built without weights from ``plan_config`` (a path relative to
        ``base``, the config file's folder) when set (:func:`~persona_gate.models.weightless.load_weightless`),
        else the loaded model (:meth:`load_model`)."""
        if self.plan_config is None:
            return self.load_model(device)
        from ..models.weightless import load_weightless

        where = Path(self.plan_config).expanduser()
        if not where.is_absolute() and base is not None:
            where = Path(base) / where
        return load_weightless(where, dtype=self.dtype, chat_template=self.chat_template, name=self.model)

    def load_model(self, device: str | None = None) -> Any:
        """The model this config names: its dtype, device or device_map, and chat template.

        ``device`` is the fallback for a config that sets neither ``device`` nor ``device_map``
        (default: the loader's, CUDA if available).
        """
        from ..models.loading import load_chat_model

        placed = self.device is not None or self.device_map is not None
        return load_chat_model(
            self.model,
            dtype=self.dtype,
            device=self.device if placed else device,
            device_map=self.device_map,
            chat_template=self.chat_template,
        )


_LOADERS = {
    "strongreject": "load_strongreject",
    "advbench": "load_advbench",
    "jailbreakbench": "load_jailbreakbench",
    "harmbench": "load_harmbench",
    "xstest": "load_xstest",
}


def harmful_requests(cfg: RunConfig) -> list | None:
    """The public harmful set named by the config (all of it; n_eval caps what is scored)."""
    if cfg.harmful_dataset is None:
        return None
    if cfg.harmful_dataset not in _LOADERS:
        raise ConfigError(f"unknown harmful_dataset {cfg.harmful_dataset!r}; use one of {sorted(_LOADERS)}.")
    from ..prompts import datasets

    requests = getattr(datasets, _LOADERS[cfg.harmful_dataset])(cfg.harmful_source)
    return [r for r in requests if r.harmful is not False]


def stage_done(path: Path, loader: Callable[[Path], Any]) -> bool:
    if not path.exists():
        return False
    try:
        loader(path)
        return True
    except (ArtefactError, OSError, ValueError, KeyError):
        log.warning("stage folder %s is incomplete or corrupt; recomputing it", path)
        return False


# Settings that do not change any number a run computes: a run may resume under other values.
# ``extraction_sites`` only adds (or skips) its own stage, so a finished run can take it on later;
# ``plan_config`` is read by ``run --plan`` only.
_RESUMABLE_UNDER_CHANGE = ("device", "device_map", "extraction_sites", "plan_config")


def check_resumable(cfg: RunConfig, out: Path) -> None:
    """Refuse to resume ``out`` under a configuration other than the one that started it."""
    path = out / "config.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is corrupt; delete the run folder {out} or use a new --out.") from None
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))  # as saved: tuples become lists
    defaults = json.loads(json.dumps(dataclasses.asdict(RunConfig())))
    old = {**{k: v for k, v in defaults.items() if k not in old}, **old}  # keys added since: their defaults
    changed = sorted(k for k in set(old) | set(new) if k not in _RESUMABLE_UNDER_CHANGE and old.get(k) != new.get(k))
    if changed:
        raise ConfigError(
            f"run folder {out} was started with a different configuration (differs in {changed}); "
            "use a new --out folder, or delete this one to start over."
        )


def _clean_stale(out: Path) -> None:
    """Remove temporaries left by a process killed mid-write (never visible as results); only the
    folder's lock holder calls it, and temporaries of a live process on this host are kept."""
    remove_stale_temporaries(out, (".*.tmp-*", ".*.old-*", "*/.*.tmp-*", "cells/*/.*.tmp-*"), owner=True)


def run_windows(cfg: RunConfig, n_layers: int) -> list[tuple[int, int]] | None:
    """The windows to project over when ``layers`` limits the fitted directions: those whose every
    layer has one (None: every window of ``window_width``, or the full grid). No window left is a
    named error, raised before any work."""
    if cfg.layers is None:
        return None
    from .paper import window_spans

    have = set(cfg.layers)
    windows = [(a, b) for a, b in window_spans(n_layers, cfg.window_width) if all(x in have for x in range(a, b + 1))]
    if not windows:
        raise ConfigError(
            f"layers {list(cfg.layers)} hold no window{f' of width {cfg.window_width}' if cfg.window_width else ''} whose every "
            "layer has a direction, so the window-projection stage has nothing to run; list contiguous layers "
            "(e.g. [3, 4, 5]), lower window_width, or drop layers to fit every layer."
        )
    return windows


def _check_fits(cfg: RunConfig, model: Any) -> list[tuple[int, int]] | None:
    """Every stage's needs, checked before the first of them runs (patching re-runs blocks), and
    before config.json pins the folder to this configuration: a rejected one can be fixed in place.
    Returns the windows to project over."""
    from ..models.adapter import check_supported

    check_supported(model, "hooks", "blocks", "replay", what="`persona-gate run` (its patching stage)")
    n_layers = int(model.cfg.n_layers)
    for layer in cfg.layers or ():
        if layer >= n_layers:
            raise ConfigError(
                f"config key 'layers' names layer {layer}, but {cfg.model} has {n_layers} (0-{n_layers - 1})."
            )
    if cfg.window_width is not None and cfg.window_width > n_layers:
        raise ConfigError(
            f"config key 'window_width' is {cfg.window_width}, but {cfg.model} has {n_layers} layers; "
            f"pick a width <= {n_layers}."
        )
    return run_windows(cfg, n_layers)


@contextmanager
def _open_run(cfg: RunConfig, out: str | Path, workers: Any) -> Iterator[Path]:
    """Claim, lock and tidy the run folder (process 0 first) and refuse a folder of another configuration.

    Process 0 holds the folder's lock (:class:`~persona_gate.io.FolderLock`) until the run ends, also
    by an exception or Ctrl-C; the other processes of its torchrun / accelerate job join it. Another
    run into the same folder is refused while this one is alive.
    """
    if not workers.lead:
        workers.barrier()  # process 0 claims, locks and tidies the folder first
    out = claim_folder(out, "run", written_by="persona_gate.run_pipeline")  # a bad --out fails before any work
    lock = FolderLock(out, "persona-gate run") if workers.lead else None
    if lock is not None:
        lock.acquire()
    try:
        check_resumable(cfg, out)
        if workers.lead:
            _clean_stale(out)
            workers.barrier()
        yield out
    finally:
        if lock is not None:
            lock.release()


def _run_stage(st: Any, ctx: Any, workers: Any, times: dict, reused: list[str]) -> Any:
    """One stage: skipped if its folder loads; else computed (split: by every process, each its
    share of the cells; otherwise by process 0 while the others wait) and saved by process 0."""
    from ..grid import ONE, sharing

    path = ctx.out / st.name
    if stage_done(path, lambda p: st.load(p, ctx)):
        log.info("stage %s already done", st.name)
        reused.append(st.name)
        return st.load(path, ctx)
    t = time.perf_counter()
    log.info("stage %s: computing", st.name)
    result = None
    if st.split or workers.lead:
        with sharing(workers if st.split else ONE):
            result = st.compute(ctx)
    workers.barrier()  # every process is done with the stage's cells
    if workers.lead:
        if isinstance(result, tuple):  # several artefacts in one stage folder
            for sub, r in result:
                r.save(path / sub)
        else:
            result.save(path)
        shutil.rmtree(ctx.out / "cells" / st.name, ignore_errors=True)  # the stage folder now holds every cell
        times[st.name] = round(time.perf_counter() - t, 2)
        atomic_write_text(ctx.out / "stage_seconds.json", json.dumps(times, indent=1))
    workers.barrier()
    return st.load(path, ctx)


def run_pipeline(cfg: RunConfig, out: str | Path, *, progress: bool = True) -> RunSummary:
    """Run every unfinished stage of :data:`~persona_gate.experiments.stages.STAGES` into ``out``
    and return the summary (also in summary.json)."""
    from ..grid import from_environment

    workers = from_environment()  # one process, or those torchrun / accelerate launch started
    if workers.lead:
        _check_out(cfg, Path(out))  # a bad --out fails before the model loads
    t0 = time.perf_counter()
    model = cfg.load_model(workers.device())
    loaded = (t0, round(time.perf_counter() - t0, 2))
    windows = _check_fits(cfg, model)  # the layers and windows: checked before any folder is made
    with _open_run(cfg, out, workers) as opened:
        return _run_stages(cfg, opened, workers, progress, model, windows, loaded)


def _check_out(cfg: RunConfig, out: Path) -> None:
    """What :func:`_open_run` will check of ``out``, creating nothing: a folder that can be a run folder,
    that no live run holds, and (to resume) was started with this configuration."""
    check_claimable(out, "run")
    FolderLock(out, "persona-gate run").check()
    if out.is_dir():
        check_resumable(cfg, out)


def _run_stages(
    cfg: RunConfig, out: Path, workers: Any, progress: bool, model: Any, windows: Any, loaded: tuple[float, float]
) -> RunSummary:
    """The body of :func:`run_pipeline`, in the locked folder ``out``, on the loaded ``model``
    (``loaded``: when its loading started and the seconds it took)."""
    from ..scoring.refusal import RefusalScorer, eval_groups
    from .patching import gate_layers
    from .stages import STAGES, Context

    times_path = out / "stage_seconds.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    t0, times["load_model"] = loaded
    ctx = Context(cfg, model, out, groups={}, scorer=None, windows=windows, progress=progress)
    if workers.lead:
        atomic_write_text(out / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    reused: list[str] = []  # stages an earlier run in this folder had finished
    enabled = [st for st in STAGES if st.enabled(cfg)]
    for st in enabled:
        result = _run_stage(st, ctx, workers, times, reused)
        if st.name == "directions":
            ctx.refusal, ctx.persona = result
            ctx.scorer = RefusalScorer.for_model(model, phrases=cfg.refusal_phrases)
            ctx.groups = eval_groups(model, cfg.n_eval, seed=cfg.seed, harmful=harmful_requests(cfg))
        else:
            ctx.results[st.name] = result
    cells = out / "cells"
    if workers.lead and cells.is_dir() and not any(cells.iterdir()):
        cells.rmdir()  # every stage is done: no cell is left to keep
    times["total"] = round(time.perf_counter() - t0, 2)
    if workers.lead:
        atomic_write_text(times_path, json.dumps(times, indent=1))
    r = ctx.results
    patch = r["patching"]
    summary = summarise(
        model,
        cfg,
        ctx.refusal,
        ctx.persona,
        r["steering_sweep"],
        r["reintroduction"],
        r["window_projection"],
        patch,
        gate_layers(patch),
        times,
        direction_gates=gate_layers(r["direction_patching"]) if "direction_patching" in r else None,
    )
    summary = dataclasses.replace(
        summary,
        extraction_sites=summarise_sites(r["extraction_sites"]) if "extraction_sites" in r else None,
        reused_stages=reused,
        processes=workers.world,
        stages=[{"name": st.name, "title": st.title} for st in enabled],
    )
    if workers.lead:
        atomic_write_text(out / "summary.json", summary.to_json(indent=1))
    workers.barrier()
    return summary


def summarise_sites(sites: Any) -> dict[str, Any]:
    """Per extraction position: the layer whose direction steers refusal lowest (safe persona,
    harmful requests) and the layer whose direction, ablated at every layer, restores most
    (compliant persona, harmful), with harmless refusal under that ablation; rates on ``n`` prompts."""
    rate, effects = sites.values["rate"], list(sites.coords["effect"])
    layers = list(sites.coords["layer"])
    out = {}
    for pi, pos in enumerate(sites.coords["position"]):
        steer, abl = rate[pi, :, effects.index("steering_refusal")], rate[pi, :, effects.index("ablation_refusal")]
        si, ai = int(steer.argmin()), int(abl.argmax())
        # A layer is named only where it changes refusal: a tie at the baseline names none.
        moved_s = round(float(steer[si]), 4) < round(
            float(sites.baselines.get("safe/harmful", 1.0)), 4
        )  # baselines are rounded
        moved_a = round(float(abl[ai]), 4) > round(float(sites.baselines.get("compliant/harmful", 0.0)), 4)
        out[pos] = {
            "steering_layer": layers[si] if moved_s else None,
            "steering_refusal": round(float(steer[si]), 4),
            "ablation_layer": layers[ai] if moved_a else None,
            "ablation_refusal": round(float(abl[ai]), 4),
            "ablation_harmless_refusal": round(float(rate[pi, ai, effects.index("ablation_harmless_refusal")]), 4),
            "cos_refusal_at_ablation_layer": round(float(rate[pi, ai, effects.index("cos_refusal")]), 4),
        }
    return {"n": int(sites.config["n"]), "baselines": dict(sites.baselines), "positions": out}


def _rounded(row: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def summarise(
    model: Any,
    cfg: RunConfig,
    refusal: Any,
    persona: Any,
    sweep: Any,
    back: Any,
    windows: Any,
    patch: Any,
    gates: list[dict],
    times: dict,
    direction_gates: list[dict] | None = None,
) -> RunSummary:
    """summary.json: the run's headline numbers, each traceable to a result folder (without the
    run's own record: extraction sites, reused stages, processes, stage list; run_pipeline adds them).
    ``gates`` and ``direction_gates``: :func:`~persona_gate.experiments.patching.gate_layers` of the
    residual and the directional patching."""
    import torch

    from ..provenance import versions
    from .summary import RunSummary
    from .verdicts import gate_window, verdicts

    harmful = sweep.sel(request="harmful").mean("example")["refused"]  # [layer, alpha]
    best = torch.nan_to_num(harmful, nan=2.0).argmin()
    li, ai = divmod(int(best), harmful.shape[1])
    wrate = windows.mean("example")["refused"]  # [direction, start, end]
    names = list(windows.coords["direction"])
    rand = wrate[[i for i, n in enumerate(names) if n != "persona"]]
    per_window = {}
    for a, b in windows.config["windows"]:
        per_window[f"{a}-{b}"] = {
            "persona": round(float(wrate[names.index("persona"), a, b]), 4),
            "random_mean": round(float(rand[:, a, b].mean()), 4),
            "random_max": round(float(rand[:, a, b].max()), 4),
        }
    cos = persona.cosine(refusal)
    return RunSummary(
        model=cfg.model,
        n_layers=int(model.cfg.n_layers),
        dtype=cfg.dtype,
        n_prompts_per_group={"fit": cfg.n_fit, "eval": int(sweep.sizes["example"])},
        baseline_refusal_rate=sweep.baselines["unsteered_harmful_refusal_rate"],
        harmless_refusal_rate=sweep.baselines["unsteered_harmless_refusal_rate"],
        steered_refusal_rate=round(float(harmful[li, ai]), 4),
        steered_at={"layer": sweep.coords["layer"][li], "alpha": sweep.coords["alpha"][ai]},
        compliant_persona_refusal_rate=back.baselines["compliant_refusal_rate"],
        reintroduction_refusal_by_layer={
            str(layer): round(float(v), 4) for layer, v in zip(back.coords["layer"], back.mean("example")["refused"])
        },
        window_refusal=per_window,
        verdicts=verdicts(sweep, back, windows, int(model.cfg.n_layers)),
        gate_window=gate_window(back, windows, gates, direction_gates, seed=cfg.seed),
        gate_layers=[g["layer"] for g in gates if g["gate"]],
        patching_by_layer=[_rounded(g) for g in gates],
        direction_patching_by_layer=None if direction_gates is None else [_rounded(g) for g in direction_gates],
        cos_persona_refusal_by_layer={str(s.layer): round(float(c), 4) for s, c in zip(persona.sites, cos)},
        seconds=dict(times),
        seed=cfg.seed,
        versions=versions(),
        config=dataclasses.asdict(cfg),
    )


# The demo searches every window (the full start x end grid on a small model): the gate search needs every width.
DEMO = RunConfig(model="organism", n_fit=48, n_eval=24, alphas=[0.0, 2.0, 4.0], random_seeds=5, patch_examples=6)
