"""The label-efficiency protocol: how good is each method with 1 %, 5 %, ... 100 % of the training labels?

For every fraction and seed a patient-grouped, stratified sample of the training set is drawn (the same
sample for every method, so methods are compared on identical labels). Heads on the frozen backbone
(probe, kNN, MLP), last-block fine-tuning, and supervised baselines trained here from scratch are fitted
on it, with all model selection and calibration done inside the sample, and scored on the test split,
which no method ever sees before scoring. Results are written after every run, so an interrupted full run
resumes where it stopped (``resume=True``).

Resume is keyed per run on everything the run depends on: a head run on the backbone id (a hash of every
weight tensor), the data fingerprints and the head's settings, so a report for new weights never reuses a
head trained on old features; a baseline run on the data, its settings, fraction and seed but not on the
backbone, and it is also kept in a ``BaselineCache`` shared between reports (hours of CPU, computed once).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orthofm.heads.embeddings import EmbeddingStore, content_hash
from orthofm.heads.finetune import FinetuneConfig, cached_prefix_tokens, suffix_features, train_finetune
from orthofm.heads.labels import LabeledSet, load_labels
from orthofm.heads.runtime import autocast, default_cache_dir, default_model_dir, precision_dtype
from orthofm.heads.saved import TrainedHead
from orthofm.heads.train import finish_head, fit_head
from orthofm.models import Backbone
from orthofm.utils.atomic import atomic_write_text
from orthofm.utils.jsonable import json_default
from orthofm.utils.runtime import resolve_precision

from .baselines import (
    BUDGET_FIELDS,
    BaselineCache,
    BaselineConfig,
    answers_for,
    baseline_key,
    entry_answers_for,
    load_image_tensors,
    pid_alive,
    train_baseline,
)
from .metrics import classification_metrics, confusion_matrix, reliability_bins
from .splits import assert_disjoint_groups, sample_fraction

__all__ = ["PRESETS", "ProtocolConfig", "data_fingerprint", "head_key", "run_protocol"]

log = logging.getLogger(__name__)
FEATURE_HEADS = ("probe", "knn", "mlp")
ALL_METHODS = (*FEATURE_HEADS, "finetune")


@dataclass
class ProtocolConfig:
    """Everything that defines one evaluation run (saved verbatim into the report)."""

    train: str
    test: str
    out: str
    weights: str | None = None
    task: str = "task"
    fractions: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50, 1.0)
    seeds: int = 3
    heads: tuple[str, ...] = ("probe", "knn", "mlp", "finetune")
    head_fractions: dict[str, tuple[float, ...]] = field(default_factory=dict)  # per-method override
    head_seeds: dict[str, int] = field(default_factory=dict)  # per-method override of ``seeds``
    head_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: tuple[str, ...] = ("resnet18", "vit_random")
    baseline_fractions: tuple[float, ...] = (0.10, 0.50, 1.0)
    baseline_method_fractions: dict[str, tuple[float, ...]] = field(default_factory=dict)  # per-baseline override
    baseline_seeds: int = 3
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    baseline_cache: str | None = None  # shared store of finished baseline runs (default: next to the embeddings)
    baselines_cached_only: bool = False  # never train a baseline: use cached runs, list the others as pending
    # "method@fraction" -> precision for single baseline runs (e.g. one trained on another machine); part of its key
    baseline_precision_for: dict[str, str] = field(default_factory=dict)
    ordinal: bool | None = None
    max_train_images: int | None = None  # patient-grouped subsample of the training split (quick runs)
    max_test_images: int | None = None
    cache: str | None = None
    batch_size: int = 32
    resume: bool = True
    reference: dict[str, float] = field(default_factory=dict)  # published numbers to compare against
    command: str = ""
    preset: str = ""  # shown in the report; not part of any run key
    report_only: bool = False  # render the report from results.json now (e.g. while another process still runs)

    def __post_init__(self) -> None:  # a typo in an override fails before any training, not after
        planned = {f"{m}@{float(f):g}" for m in self.baselines
                   for f in self.baseline_method_fractions.get(m, self.baseline_fractions)}
        for item, precision in self.baseline_precision_for.items():
            if item not in planned:  # an override that matches no run would silently change nothing
                raise ValueError(f"baseline precision override {item!r}: no such planned baseline run; "
                                 f"expected one of {sorted(planned)}")
            resolve_precision(precision)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["baseline"] = asdict(self.baseline)
        return d

    def baseline_for(self, method: str, fraction: float) -> BaselineConfig:
        """The baseline settings of one run: ``baseline`` with that run's precision override, if any."""
        precision = self.baseline_precision_for.get(f"{method}@{float(fraction):g}")
        return replace(self.baseline, precision=precision) if precision else self.baseline


# measured: see docs/heads.md "The cpu preset" for the per-epoch cost behind these two numbers
CPU_BASELINE_SIZE = 224
CPU_BASELINE_CPU_MINUTES = 40.0

PRESETS: dict[str, dict[str, Any]] = {
    # minutes on a tiny backbone: CI / smoke test of the whole pipeline, numbers meaningless
    "quick": {
        "fractions": (0.5, 1.0), "seeds": 2, "heads": ("probe", "knn", "mlp", "finetune"),
        "head_params": {"finetune": {"n_blocks": 1, "max_epochs": 2}, "probe": {"cs": (1e-3, 1e-1)},
                        "mlp": {"max_epochs": 20}},
        "baselines": ("resnet18", "vit_random"), "baseline_fractions": (1.0,), "baseline_seeds": 1,
        "baseline": BaselineConfig(image_size=64, max_epochs=2, patience=1, batch_size=16),
        "max_train_images": 160, "max_test_images": 80,
    },
    # what a 2-core CPU shared with other jobs affords (docs/heads.md "The cpu preset"): every frozen-feature head
    # at every fraction and seed (seconds each on cached embeddings), fine-tuning and the baselines at the
    # fractions the two questions need, one seed, with CPU-time budgets that the report flags as "not converged"
    "cpu": {
        "fractions": (0.01, 0.05, 0.10, 0.25, 0.50, 1.0), "seeds": 3, "heads": ("probe", "knn", "mlp", "finetune"),
        "head_fractions": {"finetune": (0.5, 1.0)}, "head_seeds": {"finetune": 1},
        "head_params": {"finetune": {"n_blocks": 2, "max_epochs": 15, "patience": 3, "max_cpu_minutes": 20}},
        "baselines": ("resnet18", "vit_random"), "baseline_fractions": (1.0, 0.5),
        "baseline_method_fractions": {"vit_random": (1.0,)}, "baseline_seeds": 1,
        "baseline": BaselineConfig(image_size=CPU_BASELINE_SIZE, max_epochs=60, patience=6,
                                   max_cpu_minutes=CPU_BASELINE_CPU_MINUTES, max_minutes=720),
    },
    # the published protocol: 6 fractions x 3 seeds, every head, both baselines to convergence
    "full": {
        "fractions": (0.01, 0.05, 0.10, 0.25, 0.50, 1.0), "seeds": 3, "heads": ("probe", "knn", "mlp", "finetune"),
        "head_fractions": {"finetune": (0.05, 0.25, 0.50, 1.0)},
        "baselines": ("resnet18", "vit_random"), "baseline_fractions": (0.10, 0.50, 1.0), "baseline_seeds": 3,
    },
}


def _grouped_cap(data: LabeledSet, n_max: int | None, seed: int) -> LabeledSet:
    if n_max is None or len(data) <= n_max:
        return data
    idx = sample_fraction(data.y, data.patients, n_max / len(data), seed)
    return data.subset(idx)


def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:24]


def data_fingerprint(data: LabeledSet) -> str:
    """Hash of a labelled set: every image's bytes, label and patient, in order, plus the class list.

    Paths are left out on purpose: the same images in another folder are the same data. Order is kept
    because the grouped samples are drawn by index.
    """
    h = hashlib.sha256(json.dumps(list(data.classes)).encode())
    for path, label, patient in zip(data.paths, data.labels, data.patients):
        h.update(f"{content_hash(path)}\t{label}\t{patient}\n".encode())
    return h.hexdigest()[:24]


def head_key(method: str, fraction: float, seed: int, *, backbone_id: str, data: dict[str, Any],
             params: dict[str, Any] | None, ordinal: bool) -> str:
    """Key of one head run: backbone weights (their id), data, head settings, fraction and seed."""
    return _digest({"method": method, "fraction": round(float(fraction), 6), "seed": int(seed),
                    "backbone_id": backbone_id, "data": data, "params": params or {}, "ordinal": bool(ordinal)})


class _Results:
    """results.json kept up to date after every run (atomic), reloaded when resuming.

    Only runs whose key is in the current plan are kept: a run made with other weights, data or settings
    is dropped (and logged), never silently mixed into a new report.
    """

    def __init__(self, path: Path, config: ProtocolConfig, resume: bool, planned: set[str]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"config": config.to_dict(), "runs": [], "predictions": {}, "pending": []}
        self.previous_command = ""
        if resume and path.is_file():
            old = json.loads(path.read_text())
            self.previous_command = old.get("config", {}).get("command", "")
            runs = old.get("runs", [])
            old_budgets = old.get("config", {}).get("baseline", {})
            kept = [r for r in runs if r.get("key") in planned and _still_answers(r, old_budgets, config.baseline)]
            self.data["runs"] = kept
            keys = {r["key"] for r in kept}
            self.data["predictions"] = {k: v for k, v in old.get("predictions", {}).items() if v.get("key") in keys}
            log.info("resuming: %d of %d runs in %s match this configuration (%d dropped: other weights, data or "
                     "settings)", len(kept), len(runs), path, len(runs) - len(kept))
        self.done = {r["key"] for r in self.data["runs"]}

    def add(self, run: dict[str, Any], probs: np.ndarray | None = None, y_test: np.ndarray | None = None) -> None:
        self.data["runs"].append(run)
        self.done.add(run["key"])
        if probs is not None and y_test is not None and run["seed"] == 0 and run["fraction"] in (0.5, 1.0):
            self.data["predictions"][f"{run['method']}|{run['fraction']:g}"] = {
                "key": run["key"], "probs": np.round(probs, 5).tolist(), "y": y_test.tolist()}
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=json_default))


def _still_answers(run: dict[str, Any], old_budgets: dict[str, Any], config: BaselineConfig) -> bool:
    """A stored baseline run stands unless a budget stopped it and the configuration now allows more."""
    training = run.get("training")
    if not training:
        return True  # a head run (heads have no budgets in the key's sense)
    return answers_for(bool(training.get("converged")), run.get("trained_with") or old_budgets, config)


def _metrics(y: np.ndarray, probs: np.ndarray, ordinal: bool, head: TrainedHead | None = None) -> dict[str, Any]:
    pred = head.decode(probs) if head is not None else probs.argmax(axis=1)
    m = classification_metrics(y, probs, ordinal=ordinal, y_pred=pred)
    m["confusion"] = confusion_matrix(y, pred, probs.shape[1]).tolist()
    m["reliability"] = reliability_bins(y, probs).to_dict()
    return m


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """One writer per report folder: two runs rewriting the same results.json would silently drop each other's runs."""
    lock = out / ".evaluate.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                info = json.loads(lock.read_text())
            except (OSError, ValueError):
                info = {}
            if info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid", -1))):
                log.warning("removing stale lock %s (pid %s is gone)", lock, info.get("pid"))
                lock.unlink(missing_ok=True)
                continue
            raise RuntimeError(f"{out} is being written by another `orthofm evaluate` ({info or 'unknown holder'}); "
                               "wait for it, stop it, use another --out, or add --report-only to render "
                               "what it has finished") from None
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, fh)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def run_protocol(config: ProtocolConfig, backbone: Backbone | None = None) -> dict[str, Any]:
    """Run the protocol and write ``results.json`` + the report into ``config.out``; returns the results."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.report_only:
        return _run_protocol(config, backbone)
    with _folder_lock(out):
        return _run_protocol(config, backbone)


def _run_protocol(config: ProtocolConfig, backbone: Backbone | None) -> dict[str, Any]:
    from .report import write_report

    out = Path(config.out)
    if not config.command:
        config = replace(config, command=" ".join(shlex.quote(a) for a in sys.argv))
    weights = Path(config.weights) if config.weights else default_model_dir()
    if backbone is None:
        from orthofm.models import load_backbone  # type: ignore[attr-defined]

        backbone = load_backbone(weights)
    backbone.eval()
    train = _grouped_cap(load_labels(config.train), config.max_train_images, seed=1234)
    test = _grouped_cap(load_labels(config.test, classes=train.classes), config.max_test_images, seed=1234)
    if train.classes != test.classes:
        raise ValueError(f"train classes {train.classes} differ from test classes {test.classes}")
    leaked = set(train.patients) & set(test.patients)
    if leaked:
        raise ValueError(f"{len(leaked)} patients are in both the training and the test split, e.g. {sorted(leaked)[:3]}")
    ordinal = train.is_ordinal_like if config.ordinal is None else config.ordinal
    k = len(train.classes)
    y, y_test = train.y, test.y
    store = EmbeddingStore(config.cache or default_cache_dir(), backbone, batch_size=config.batch_size)
    data_fp = {"train": data_fingerprint(train), "test": data_fingerprint(test), "classes": list(train.classes)}
    log.info("protocol: %d train images (%d patients), %d test images, classes %s, ordinal=%s, backbone %s",
             len(train), len(set(train.patients)), len(test), train.classes, ordinal, store.backbone_id)
    plan = _plan(config)
    keys = {p: _key(config, p, store.backbone_id, data_fp, ordinal, backbone.arch) for p in plan}
    results = _Results(out / "results.json", config, config.resume, set(keys.values()))
    results.data["setup"] = {
        "backbone_id": store.backbone_id, "arch": backbone.arch, "weights": str(weights), "data": data_fp,
        "n_train": len(train), "n_train_patients": len(set(train.patients)), "n_test": len(test),
        "n_test_patients": len(set(test.patients)), "classes": train.classes, "ordinal": ordinal,
        "train_class_counts": np.bincount(y, minlength=k).tolist(),
        "test_class_counts": np.bincount(y_test, minlength=k).tolist(), "threads": torch.get_num_threads(),
    }
    results.data["planned"] = [list(p) for p in plan]  # lets a report rendered mid-run list what is missing
    todo = [p for p in plan if keys[p] not in results.done]
    log.info("protocol: %d runs planned (%d already done)", len(plan), len(plan) - len(todo))
    cache = None
    if config.baselines:
        cache = BaselineCache(config.baseline_cache or default_cache_dir().parent / "baselines")
        results.data["setup"]["baseline_cache"] = str(cache.root)
    if config.report_only:  # no training and no results.json write: a running command keeps owning that file
        results.data["config"]["rendered_by"] = config.command
        results.data["config"]["command"] = results.previous_command or config.command
        for method, fraction, seed in todo:  # baselines: read the cache (never train), list the missing as pending
            if method in ALL_METHODS or cache is None:
                continue
            key = keys[(method, fraction, seed)]
            entry = cache.get(method, key)
            if entry is None or not entry_answers_for(entry, config.baseline):
                results.data["pending"].append({"method": method, "fraction": fraction, "seed": seed, "key": key,
                                                "cache": str(cache.path(method, key))})
            else:
                probs = np.asarray(entry["probs"], dtype=np.float64)
                run = _from_cache(entry, cache.path(method, key), y_test)
                run["metrics"] = _metrics(y_test, probs, ordinal)
                results.data["runs"].append(run)
                if seed == 0 and fraction in (0.5, 1.0):
                    results.data["predictions"][f"{method}|{fraction:g}"] = {
                        "key": key, "probs": np.round(probs, 5).tolist(), "y": y_test.tolist()}
        results.data["summary"] = summarise(results.data["runs"])
        write_report(results.data, out)
        return results.data
    x = x_test = None
    if any(m in FEATURE_HEADS for m, _, _ in todo):
        t_embed = time.perf_counter()
        x, x_test = store.embed_paths(train.paths), store.embed_paths(test.paths)
        results.data["setup"]["embedding_seconds"] = time.perf_counter() - t_embed
    bb_info = {"id": store.backbone_id, "arch": backbone.arch, "weights": str(weights)}
    tokens = test_tokens = None
    images: tuple[torch.Tensor, torch.Tensor] | None = None
    t_start = time.perf_counter()
    for n_done, (method, fraction, seed) in enumerate(todo, start=1):
        key = keys[(method, fraction, seed)]
        idx = sample_fraction(y, train.patients, fraction, seed)
        sub_groups = [train.patients[i] for i in idx]
        assert_disjoint_groups(train.patients + test.patients, idx, np.arange(len(train), len(train) + len(test)))
        t0, cpu0 = time.perf_counter(), time.process_time()
        run: dict[str, Any] = {"method": method, "fraction": fraction, "seed": seed, "key": key, "n_train": len(idx),
                               "n_patients": len(set(sub_groups))}
        head = None
        if method in FEATURE_HEADS:
            assert x is not None and x_test is not None
            head = fit_head(x[idx], y[idx], sub_groups, train.classes, kind=method, task=config.task, ordinal=ordinal,
                            seed=seed, backbone=bb_info, label_fraction=fraction,
                            params=config.head_params.get(method))
            probs = head.predict_proba(x_test)
            run.update(backbone_id=store.backbone_id, params=head.card.params, calibration=head.card.calibration)
        elif method == "finetune":
            ft_cfg = FinetuneConfig(**config.head_params.get("finetune", {}))
            if tokens is None:
                start = len(backbone.model.blocks) - ft_cfg.n_blocks  # type: ignore[attr-defined]
                tokens, grid = cached_prefix_tokens(backbone, store, train.paths, start,
                                                    batch_size=config.batch_size, precision=ft_cfg.precision,
                                                    progress=True)
                test_tokens, _ = cached_prefix_tokens(backbone, store, test.paths, start,
                                                      batch_size=config.batch_size, precision=ft_cfg.precision,
                                                      progress=True)
            ft, fit = train_finetune(backbone, tokens[torch.as_tensor(idx)], grid, y[idx], sub_groups, k,
                                     ordinal=ordinal, config=ft_cfg, seed=seed)
            head = finish_head(ft, fit, train.classes, task=config.task, ordinal=ordinal, decode="argmax",
                               backbone=bb_info, data={}, label_fraction=fraction, seed=seed)
            tuned = ft.backbone_for(backbone)
            start = len(tuned.model.blocks) - ft_cfg.n_blocks  # type: ignore[attr-defined]
            test_dtype = precision_dtype(ft_cfg.precision)
            with torch.no_grad(), autocast(test_dtype):
                feats = torch.cat([suffix_features(tuned, test_tokens[s : s + 64].to(test_dtype), start, grid).float()
                                   for s in range(0, len(test_tokens), 64)]).numpy()
            probs = head.predict_proba(feats)
            run.update(backbone_id=store.backbone_id, params=head.card.params, calibration=head.card.calibration,
                       fit=fit.info)
        else:
            assert cache is not None
            entry = cache.get(method, key)
            if entry is not None and not entry_answers_for(entry, config.baseline):
                log.info("[%d/%d] %s f=%g seed=%d: the cached run was stopped by a smaller budget: %s", n_done,
                         len(todo), method, fraction, seed,
                         "listed as pending" if config.baselines_cached_only else "continuing it")
                entry = None
            if entry is None and config.baselines_cached_only:
                results.data["pending"].append({"method": method, "fraction": fraction, "seed": seed, "key": key,
                                                "cache": str(cache.path(method, key))})
                log.info("[%d/%d] %s f=%g seed=%d: not in the baseline cache, listed as pending", n_done, len(todo),
                         method, fraction, seed)
                continue
            if entry is None:
                with cache.claim(method, key, accept=lambda e: entry_answers_for(e, config.baseline)) as entry:
                    if entry is None:
                        if images is None:
                            size, bcfg = config.baseline.image_size, config.baseline
                            images = (load_image_tensors(train.paths, size, bcfg.mean, bcfg.std),
                                      load_image_tensors(test.paths, size, bcfg.mean, bcfg.std))
                        resume = cache.resume_path(method, key)
                        run_cfg = config.baseline_for(method, fraction)
                        res = train_baseline(method, images[0][torch.as_tensor(idx)], y[idx], sub_groups, images[1],
                                             k, arch=backbone.arch, ordinal=ordinal, config=run_cfg, seed=seed,
                                             checkpoint=resume,
                                             on_epoch=lambda _epoch, m=method, kk=key: cache.heartbeat(m, kk))
                        probs = res.probs
                        run.update(training=res.summary(), wall_seconds=time.perf_counter() - t0,
                                   trained_with={b: getattr(run_cfg, b) for b in BUDGET_FIELDS},
                                   cpu_seconds=time.process_time() - cpu0)
                        path = cache.put(method, key, run, probs, y_test, fields={
                            "data": data_fp, "config": asdict(run_cfg), "fraction": fraction, "seed": seed})
                        log.info("baseline run cached in %s", path)
                        if res.converged:  # final: its training state is no longer needed
                            resume.unlink(missing_ok=True)
            if entry is not None:
                probs = np.asarray(entry["probs"], dtype=np.float64)
                run = _from_cache(entry, cache.path(method, key), y_test)
        run["metrics"] = _metrics(y_test, probs, ordinal, head)
        run.setdefault("wall_seconds", time.perf_counter() - t0)
        run.setdefault("cpu_seconds", time.process_time() - cpu0)
        results.add(run, probs, y_test)
        elapsed = time.perf_counter() - t_start
        log.info("[%d/%d] %s f=%g seed=%d: acc %.3f qwk %s (%.0f s; elapsed %.1f min)%s", n_done, len(todo), method,
                 fraction, seed, run["metrics"]["accuracy"], f"{run['metrics'].get('qwk', float('nan')):.3f}",
                 run["wall_seconds"], elapsed / 60, " [baseline cache]" if "cached_from" in run else "")
    results.data["summary"] = summarise(results.data["runs"])
    results.save()
    write_report(results.data, out)
    return results.data


def _from_cache(entry: dict[str, Any], path: Path, y_test: np.ndarray) -> dict[str, Any]:
    """The cached run record (with its original training compute), checked against this test split's labels."""
    if entry["y_test"] != y_test.tolist():
        raise RuntimeError(f"baseline cache entry {path} has other test labels")
    return {**entry["run"], "cached_from": str(path)}


def _key(config: ProtocolConfig, item: tuple[str, float, int], backbone_id: str, data: dict[str, Any],
         ordinal: bool, arch: str) -> str:
    method, fraction, seed = item
    if method in ALL_METHODS:
        return head_key(method, fraction, seed, backbone_id=backbone_id, data=data,
                        params=config.head_params.get(method), ordinal=ordinal)
    return baseline_key(method, fraction, seed, data=data, config=config.baseline_for(method, fraction), arch=arch,
                        ordinal=ordinal)


def _plan(config: ProtocolConfig) -> list[tuple[str, float, int]]:
    plan = []
    for method in config.heads:
        if method not in ALL_METHODS:
            raise ValueError(f"unknown head {method!r}; choose from {ALL_METHODS}")
        seeds = config.head_seeds.get(method, config.seeds)
        for f in config.head_fractions.get(method, config.fractions):
            plan += [(method, float(f), s) for s in range(seeds)]
    for method in config.baselines:
        fractions = config.baseline_method_fractions.get(method, config.baseline_fractions)
        plan += [(method, float(f), s) for f in fractions for s in range(config.baseline_seeds)]
    return plan


SUMMARY_METRICS = ("accuracy", "macro_f1", "qwk", "qwk_expected_grade", "auroc", "auroc_ovr_macro", "ece", "nll")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample standard deviation, min/max and n over seeds for every (method, fraction)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["fraction"]), []).append(r)
    rows = []
    for (method, fraction), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        row: dict[str, Any] = {"method": method, "fraction": fraction, "n_seeds": len(rs),
                               "n_train": float(np.mean([r["n_train"] for r in rs]))}
        for m in SUMMARY_METRICS:
            vals = [r["metrics"][m] for r in rs if m in r["metrics"]]
            if vals:
                row[m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                          "min": float(np.min(vals)), "max": float(np.max(vals))}
        cpu = [r.get("training", {}).get("cpu_minutes", r["cpu_seconds"] / 60) for r in rs]
        row["cpu_minutes"] = {"mean": float(np.mean(cpu)), "total": float(np.sum(cpu))}
        conv = [r["training"]["converged"] for r in rs if "training" in r]
        conv += [r["fit"]["converged"] for r in rs if "converged" in r.get("fit", {})]
        if conv:
            row["converged"] = f"{sum(conv)}/{len(conv)}"
        rows.append(row)
    return rows
