"""The label-efficiency protocol end to end at toy scale: same samples for all methods, report, resume."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from orthofm.evaluate import protocol
from orthofm.evaluate.baselines import BaselineCache, BaselineConfig, baseline_key
from orthofm.evaluate.protocol import ProtocolConfig, run_protocol
from orthofm.evaluate.splits import sample_fraction
from orthofm.heads.labels import load_labels
from orthofm.models import PreprocessConfig, create_backbone

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on the shared 2-core machine two threads under load were ~25x slower (measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _csv(path, data) -> str:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        w.writerows([str(p), label] for p, label in zip(data.paths, data.labels))
    return str(path)


def test_protocol_report_and_resume(shared_data, tmp_path) -> None:
    train = load_labels(shared_data / "knee_kl" / "train")
    val = load_labels(shared_data / "knee_kl" / "val")
    tr = train.subset(sample_fraction(train.y, train.patients, 0.02, seed=5))
    te = val.subset(sample_fraction(val.y, val.patients, 0.03, seed=5))
    torch.manual_seed(0)
    bb = create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE, preprocess=PreprocessConfig(input_size=SIZE))
    cfg = ProtocolConfig(
        train=_csv(tmp_path / "train.csv", tr), test=_csv(tmp_path / "test.csv", te), out=str(tmp_path / "report"),
        task="knee_kl", fractions=(0.5, 1.0), seeds=2, heads=("probe", "knn"),
        head_params={"probe": {"cs": (1e-3, 1e-1), "folds": 3}}, baselines=("resnet18",),
        baseline_fractions=(1.0,), baseline_seeds=1,
        baseline=BaselineConfig(image_size=SIZE, max_epochs=2, patience=1, batch_size=16),
        cache=str(tmp_path / "cache"), command="pytest",
    )
    data = run_protocol(cfg, backbone=bb)
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} >= {"summary.md", "results.json", "label_efficiency.png",
                                               "confusion_matrix.png", "reliability.png"}
    runs = data["runs"]
    assert len(runs) == 2 * 2 * 2 + 1
    by_sample = {}
    for r in runs:  # every method trained on the very same labelled sample for a (fraction, seed)
        by_sample.setdefault((r["fraction"], r["seed"]), set()).add(r["n_train"])
        assert 0 <= r["metrics"]["accuracy"] <= 1 and "qwk" in r["metrics"] and "ece" in r["metrics"]
    assert all(len(v) == 1 for v in by_sample.values())
    base = next(r for r in runs if r["method"] == "resnet18")
    assert base["training"]["epochs_run"] >= 1 and base["training"]["cpu_minutes"] >= 0
    probe_half = next(s for s in data["summary"] if s["method"] == "probe" and s["fraction"] == 0.5)
    assert probe_half["n_seeds"] == 2 and set(probe_half["accuracy"]) == {"mean", "std", "min", "max"}
    md = (out / "summary.md").read_text()
    assert "ResNet-18 from scratch, 100 %" in md and "0.778" in md and "pytest" in md
    saved = json.loads((out / "results.json").read_text())
    assert len(saved["runs"]) == len(runs) and saved["setup"]["n_test"] == len(te)

    again = run_protocol(cfg, backbone=bb)  # resume: nothing left to do, same numbers
    assert [r["metrics"]["accuracy"] for r in again["runs"]] == [r["metrics"]["accuracy"] for r in runs]


def _tiny_backbone(seed: int):
    torch.manual_seed(seed)
    return create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE, preprocess=PreprocessConfig(input_size=SIZE))


def _small_config(shared_data, tmp_path, **kw) -> ProtocolConfig:
    train = load_labels(shared_data / "knee_kl" / "train")
    val = load_labels(shared_data / "knee_kl" / "val")
    tr = train.subset(sample_fraction(train.y, train.patients, 0.015, seed=7))
    te = val.subset(sample_fraction(val.y, val.patients, 0.02, seed=7))
    settings = {
        "fractions": (1.0,), "seeds": 1, "heads": ("probe",), "head_params": {"probe": {"cs": (1e-2,), "folds": 2}},
        "baselines": ("resnet18",), "baseline_fractions": (1.0,), "baseline_seeds": 1,
        "baseline": BaselineConfig(image_size=SIZE, max_epochs=1, patience=1, batch_size=16),
        "out": str(tmp_path / "report"), "cache": str(tmp_path / "cache"), "baseline_cache": str(tmp_path / "baselines"),
    }
    settings.update(kw)
    return ProtocolConfig(train=_csv(tmp_path / "train.csv", tr), test=_csv(tmp_path / "test.csv", te),
                          task="knee_kl", command="pytest", **settings)


def test_new_backbone_retrains_heads_but_reuses_cached_baselines(shared_data, tmp_path, monkeypatch) -> None:
    """Resume is keyed on the backbone weights for heads; baselines come from the shared cache, never retrained."""
    cfg = _small_config(shared_data, tmp_path)
    first = run_protocol(cfg, backbone=_tiny_backbone(0))
    (probe_a,) = [r for r in first["runs"] if r["method"] == "probe"]
    (base_a,) = [r for r in first["runs"] if r["method"] == "resnet18"]
    assert "cached_from" not in base_a and list((tmp_path / "baselines" / "resnet18").glob("*.json"))

    def no_training(*args, **kwargs):
        raise AssertionError("a cached baseline was trained again")

    monkeypatch.setattr(protocol, "train_baseline", no_training)
    same = run_protocol(cfg, backbone=_tiny_backbone(0))  # same weights: everything resumed from results.json
    assert [r["key"] for r in same["runs"]] == [r["key"] for r in first["runs"]]

    second = run_protocol(cfg, backbone=_tiny_backbone(1))  # new weights, same report folder
    (probe_b,) = [r for r in second["runs"] if r["method"] == "probe"]
    (base_b,) = [r for r in second["runs"] if r["method"] == "resnet18"]
    assert probe_b["backbone_id"] != probe_a["backbone_id"] and probe_b["key"] != probe_a["key"]
    assert second["setup"]["backbone_id"] == probe_b["backbone_id"]
    assert [r["key"] for r in second["runs"]].count(probe_a["key"]) == 0  # the old head run is gone
    same_run = json.dumps(base_b, sort_keys=True) == json.dumps(base_a, sort_keys=True)  # (NaN != NaN in dicts)
    assert same_run  # the baseline run does not depend on the backbone: kept

    fresh = run_protocol(_small_config(shared_data, tmp_path, out=str(tmp_path / "fresh")),
                         backbone=_tiny_backbone(1))  # new report folder: the baseline comes from the shared cache
    (base_c,) = [r for r in fresh["runs"] if r["method"] == "resnet18"]
    assert base_c["key"] == base_a["key"] and base_c["cached_from"].endswith(f"{base_a['key']}.json")
    assert base_c["metrics"]["accuracy"] == base_a["metrics"]["accuracy"]
    assert base_c["training"] == base_a["training"]  # the original compute is reported, not the cache read

    # --report-only: renders from results.json, trains nothing, leaves results.json alone, lists what is missing
    before = (tmp_path / "report" / "results.json").read_bytes()
    shown = run_protocol(replace(cfg, fractions=(0.5, 1.0), baseline_fractions=(0.5, 1.0), report_only=True,
                                 command="render"), backbone=_tiny_backbone(1))
    assert len(shown["runs"]) == 2 and (tmp_path / "report" / "results.json").read_bytes() == before
    assert [(p["method"], p["fraction"]) for p in shown["pending"]] == [("resnet18", 0.5)]  # not cached: pending
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "Runs not finished" in md and "OrthoFM + logistic probe: 50 % seed 0" in md and "render" in md
    only = run_protocol(replace(cfg, out=str(tmp_path / "render"), report_only=True), backbone=_tiny_backbone(1))
    assert [r["method"] for r in only["runs"]] == ["resnet18"] and "cached_from" in only["runs"][0]

    # a report in a new folder with other baseline settings: missing from the cache -> pending, not trained
    other = _small_config(shared_data, tmp_path, out=str(tmp_path / "other"), baselines_cached_only=True,
                          baseline=BaselineConfig(image_size=SIZE, max_epochs=1, patience=1, batch_size=8))
    third = run_protocol(other, backbone=_tiny_backbone(1))
    assert [r["method"] for r in third["runs"]] == ["probe"]
    assert [(p["method"], p["fraction"]) for p in third["pending"]] == [("resnet18", 1.0)]
    md = (tmp_path / "other" / "summary.md").read_text()
    assert "Pending baseline runs" in md and "still training" in md
    # the same settings with a larger budget: the cached run (stopped by max_epochs=1) does not answer -> pending
    larger = _small_config(shared_data, tmp_path, out=str(tmp_path / "larger"), baselines_cached_only=True,
                           baseline=BaselineConfig(image_size=SIZE, max_epochs=2, patience=1, batch_size=16))
    fourth = run_protocol(larger, backbone=_tiny_backbone(1))
    assert [(p["method"], p["fraction"]) for p in fourth["pending"]] == [("resnet18", 1.0)]


def test_a_larger_budget_continues_the_cached_baseline_from_its_checkpoint(shared_data, tmp_path) -> None:
    """A run stopped by its budget keeps its training state; a report asking for more continues it (2 = 1 + 1)."""
    cfg = _small_config(shared_data, tmp_path)
    first = run_protocol(cfg, backbone=_tiny_backbone(0))
    (base_a,) = [r for r in first["runs"] if r["method"] == "resnet18"]
    assert base_a["training"]["stop_reason"] == "max_epochs (1)" and not base_a["training"]["converged"]
    resume = BaselineCache(tmp_path / "baselines").resume_path("resnet18", base_a["key"])
    assert resume.is_file()
    more = replace(cfg, baseline=replace(cfg.baseline, max_epochs=2))
    second = run_protocol(more, backbone=_tiny_backbone(0))  # same report folder: the 1-epoch run no longer answers
    (base_b,) = [r for r in second["runs"] if r["method"] == "resnet18"]
    assert base_b["key"] == base_a["key"] and base_b["training"]["epochs_run"] == 2
    assert base_b["trained_with"]["max_epochs"] == 2
    straight = run_protocol(replace(more, out=str(tmp_path / "straight"), baseline_cache=str(tmp_path / "b2")),
                            backbone=_tiny_backbone(0))
    (base_s,) = [r for r in straight["runs"] if r["method"] == "resnet18"]
    assert base_s["metrics"]["accuracy"] == base_b["metrics"]["accuracy"]
    assert base_s["metrics"]["nll"] == pytest.approx(base_b["metrics"]["nll"], abs=1e-6)


def test_baseline_key_ignores_the_backbone_but_not_the_settings() -> None:
    data = {"train": "a", "test": "b", "classes": ["0", "1"]}
    cfg = BaselineConfig(image_size=64)
    key = baseline_key("resnet18", 1.0, 0, data=data, config=cfg, arch="vit_small", ordinal=True)
    assert key == baseline_key("resnet18", 1.0, 0, data=data, config=cfg, arch="vit_base", ordinal=True)
    assert key != baseline_key("resnet18", 1.0, 1, data=data, config=cfg, arch="vit_small", ordinal=True)
    assert key != baseline_key("resnet18", 0.5, 0, data=data, config=cfg, arch="vit_small", ordinal=True)
    assert key != baseline_key("resnet18", 1.0, 0, data={**data, "train": "c"}, config=cfg, arch="vit_small",
                               ordinal=True)
    assert key != baseline_key("resnet18", 1.0, 0, data=data, config=BaselineConfig(image_size=96), arch="vit_small",
                               ordinal=True)
    vit = baseline_key("vit_random", 1.0, 0, data=data, config=cfg, arch="vit_small", ordinal=True)
    assert vit != baseline_key("vit_random", 1.0, 0, data=data, config=cfg, arch="vit_base", ordinal=True)


def test_baseline_cache_claim_waits_for_a_live_trainer_and_takes_over_a_stale_lock(tmp_path) -> None:
    cache = BaselineCache(tmp_path, poll_seconds=0.05)
    lock = cache.path("resnet18", "k1").with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with cache.claim("resnet18", "k1") as entry:  # holder is dead: the lock is taken over
        assert entry is None and json.loads(lock.read_text())["pid"] == os.getpid()
        cache.put("resnet18", "k1", {"method": "resnet18"}, np.full((2, 2), 0.5), np.array([0, 1]))
    assert not lock.exists()
    with cache.claim("resnet18", "k1") as entry:
        assert entry is not None and entry["y_test"] == [0, 1]

    # a live holder (this process) that finishes while we wait: the waiter gets its entry, trains nothing
    lock2 = cache.path("resnet18", "k2").with_suffix(".lock")
    lock2.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    def finish() -> None:
        cache.put("resnet18", "k2", {"method": "resnet18"}, np.full((1, 2), 0.5), np.array([1]))
        lock2.unlink()

    timer = threading.Timer(0.2, finish)
    timer.start()
    with cache.claim("resnet18", "k2") as entry:
        assert entry is not None and entry["y_test"] == [1]
    timer.join()


def test_a_lock_that_went_quiet_is_taken_over_even_from_another_machine(tmp_path) -> None:
    """A session that ends leaves its lock; a new machine may reuse the pid or have another host name."""
    from orthofm.evaluate import baselines

    cache = BaselineCache(tmp_path, poll_seconds=0.05)
    lock = cache.path("vit_random", "k").with_suffix(".lock")
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": "another-machine"}))
    assert cache._holder_alive(lock)  # fresh: trusted
    old = lock.stat().st_mtime - baselines.LOCK_STALE_SECONDS - 60
    os.utime(lock, (old, old))
    assert not cache._holder_alive(lock)
    cache.heartbeat("vit_random", "k")  # what the trainer does after every epoch
    assert cache._holder_alive(lock)
    os.utime(lock, (old, old))
    with cache.claim("vit_random", "k") as entry:
        assert entry is None and json.loads(lock.read_text())["pid"] == os.getpid()


def _config_from_cli(monkeypatch, argv: list[str]) -> ProtocolConfig:
    """The ProtocolConfig that ``orthofm evaluate --train a --test b <argv>`` builds (nothing is run)."""
    import argparse

    from orthofm.cli import evaluate as cli

    seen: dict[str, ProtocolConfig] = {}

    def fake_run(config: ProtocolConfig) -> dict:
        seen["config"] = config
        return {"runs": []}

    monkeypatch.setattr(protocol, "run_protocol", fake_run)
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--train", "a", "--test", "b", *argv])
    assert args.func(args) == 0
    return seen["config"]


def test_cpu_preset_plan_and_cli_flags(monkeypatch, tmp_path) -> None:
    """``--preset cpu`` plans every frozen-feature head at 6 fractions x 3 seeds and the budgeted rest, and the
    baseline-cache flags reach the configuration (checked without running anything)."""
    cfg = _config_from_cli(monkeypatch, ["--out", str(tmp_path), "--preset", "cpu", "--baseline-cache",
                                         str(tmp_path / "bc"), "--baselines-cached-only"])
    assert cfg.baseline_cache == str(tmp_path / "bc") and cfg.baselines_cached_only
    assert cfg.baseline.max_cpu_minutes and cfg.baseline.max_minutes  # budgets on, reported as not converged
    plan = protocol._plan(cfg)
    for method in ("probe", "knn", "mlp"):
        assert sorted({(f, s) for m, f, s in plan if m == method}) == sorted(
            (f, s) for f in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0) for s in range(3))
    assert sorted((f, s) for m, f, s in plan if m == "finetune") == [(0.5, 0), (1.0, 0)]
    assert sorted((f, s) for m, f, s in plan if m == "resnet18") == [(0.5, 0), (1.0, 0)]
    assert [(f, s) for m, f, s in plan if m == "vit_random"] == [(1.0, 0)]


def test_report_rendered_mid_run_lists_unfinished_runs_pending_baselines_and_the_floor(tmp_path) -> None:
    """A report written before every planned run finished must say what is missing, never look complete."""
    from orthofm.evaluate.report import write_report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(3), 60)
    runs = [{"method": "probe", "fraction": f, "seed": 0, "key": f"k{f}", "n_train": 10, "cpu_seconds": 1.0,
             "metrics": protocol._metrics(y, probs, True)} for f in (0.5, 1.0)]
    data = {"config": {"task": "t", "command": "orthofm evaluate x", "preset": "cpu", "baseline": {}},
            "setup": {"classes": ["0", "1", "2"], "train_class_counts": [5, 30, 10], "test_class_counts": [20, 25, 15]},
            "runs": runs, "summary": protocol.summarise(runs),
            "predictions": {"probe|1": {"key": "k1.0", "probs": probs.tolist(), "y": y.tolist()}},
            "pending": [{"method": "resnet18", "fraction": 1.0, "seed": 0, "key": "b", "cache": "c/b.json"}],
            "planned": [["probe", 0.5, 0], ["probe", 1.0, 0], ["mlp", 1.0, 0], ["resnet18", 1.0, 0]]}
    md = write_report(data, tmp_path).read_text()
    assert "Runs not finished" in md and "OrthoFM + MLP: 100 % seed 0" in md
    assert "Pending baseline runs" in md and "c/b.json" in md and "Not answered yet" in md
    assert "Floor: always answering the most frequent training grade (1) scores accuracy 0.417" in md
    assert "preset `cpu`" in md

    empty = {**data, "runs": [], "summary": [], "predictions": {}}  # e.g. rendered right after the weights changed
    md = write_report(empty, tmp_path).read_text()
    assert "Runs not finished" in md and not (tmp_path / "label_efficiency.png").exists()


def test_one_writer_per_report_folder(tmp_path) -> None:
    """A second run into a folder another live process is writing must refuse, not interleave results.json."""
    out = tmp_path / "report"
    out.mkdir()
    (out / ".evaluate.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    cfg = ProtocolConfig(train="unused", test="unused", out=str(out), command="pytest")
    with pytest.raises(RuntimeError, match="being written by another"):
        run_protocol(cfg)
    assert (out / ".evaluate.lock").exists()  # the holder's lock is left alone


def test_one_baseline_run_can_have_its_own_precision(shared_data, tmp_path) -> None:
    """``baseline_precision_for`` trains (and keys) one baseline run in another precision, e.g. a run made on a
    machine without native bf16 inside a report whose other baselines are bf16; the other runs keep their keys."""
    both = ("resnet18", "vit_random")
    base = _small_config(shared_data, tmp_path, heads=(), baselines=both, baseline_fractions=(0.5, 1.0),
                         baseline=BaselineConfig(image_size=SIZE, max_epochs=1, patience=1, batch_size=16,
                                                 precision="fp32"))
    mixed = replace(base, baseline_precision_for={"resnet18@1": "bf16"})
    plan = protocol._plan(base)
    keys = {p: protocol._key(base, p, "bb", {"train": "a"}, True, "vit_tiny") for p in plan}
    mixed_keys = {p: protocol._key(mixed, p, "bb", {"train": "a"}, True, "vit_tiny") for p in plan}
    assert [p for p in plan if keys[p] != mixed_keys[p]] == [("resnet18", 1.0, 0)]
    bf16_everywhere = replace(base, baseline=replace(base.baseline, precision="bf16"))
    assert mixed_keys[("resnet18", 1.0, 0)] == protocol._key(bf16_everywhere, ("resnet18", 1.0, 0), "bb",
                                                             {"train": "a"}, True, "vit_tiny")
    only = replace(mixed, baselines=("resnet18",), baseline_fractions=(1.0,))
    (run,) = run_protocol(only, backbone=_tiny_backbone(0))["runs"]
    assert run["training"]["precision"] == "bf16"
    cached = json.loads(BaselineCache(tmp_path / "baselines").path("resnet18", run["key"]).read_text())
    assert cached["fields"]["config"]["precision"] == "bf16"
    for bad in ({"resnet18@1": "fp16"}, {"resnet50@1": "fp32"}, {"resnet18": "fp32"}, {"resnet18@0.25": "fp32"}):
        with pytest.raises(ValueError):
            replace(base, baseline_precision_for=bad)


def test_the_precision_override_flag_reaches_the_configuration(monkeypatch, tmp_path) -> None:
    cfg = _config_from_cli(monkeypatch, ["--out", str(tmp_path), "--preset", "cpu", "--baseline-precision", "bf16",
                                         "--baseline-precision-for", "vit_random@100=fp32"])
    assert cfg.baseline_precision_for == {"vit_random@1": "fp32"}
    assert cfg.baseline_for("vit_random", 1.0).precision == "fp32"
    assert cfg.baseline_for("resnet18", 1.0).precision == "bf16"
    with pytest.raises(SystemExit, match="BASELINE@PERCENT"):
        _config_from_cli(monkeypatch, ["--out", str(tmp_path), "--baseline-precision-for", "vit_random=fp32"])


def test_report_answers_whether_pretraining_beats_the_random_init_twin(tmp_path) -> None:
    """The foundation-model claim, answered per OrthoFM method against the random-init ViT on the same labels."""
    from orthofm.evaluate.report import write_report

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    good = np.eye(3)[y] * 0.8 + 0.2 / 3  # right grade with probability 0.87
    noise = rng.dirichlet(np.ones(3), 90)
    training = {"converged": True, "cpu_minutes": 50.0, "wall_minutes": 40.0, "epochs_run": 9, "best_epoch": 3,
                "stop_reason": "early stopping"}
    runs = [{"method": "probe", "fraction": 1.0, "seed": 0, "key": "p", "n_train": 10, "cpu_seconds": 6.0,
             "metrics": protocol._metrics(y, good, True)},
            {"method": "finetune", "fraction": 1.0, "seed": 0, "key": "f", "n_train": 10, "cpu_seconds": 60.0,
             "metrics": protocol._metrics(y, noise, True), "training": {**training, "cpu_minutes": 1.0}},
            {"method": "vit_random", "fraction": 1.0, "seed": 0, "key": "v", "n_train": 10, "cpu_seconds": 3000.0,
             "metrics": protocol._metrics(y, 0.5 * good + 0.5 * noise, True), "training": training}]
    data = {"config": {"task": "t", "command": "orthofm evaluate x", "preset": "cpu", "baseline": {}},
            "setup": {}, "runs": runs, "summary": protocol.summarise(runs), "predictions": {}}
    md = write_report(data, tmp_path).read_text()
    answer = md.split("**Does the pretraining beat the same ViT trained from random init on the same labels?**")[1]
    answer = answer.split("**How far")[0]
    assert "Same ViT from random init, 100 % of the labels (seeds: 1)" in answer and "50 CPU-min per run" in answer
    probe_line = next(line for line in answer.splitlines() if line.startswith("- OrthoFM + logistic probe"))
    tuned_line = next(line for line in answer.splitlines() if line.startswith("- OrthoFM, last blocks fine-tuned"))
    assert "accuracy" in probe_line and "beats" in probe_line and "falls short" not in probe_line
    assert "falls short of" in tuned_line and "1.00 CPU-min per run" in tuned_line
    assert "lower bound" not in answer  # the twin converged

    runs[2]["training"] = {**training, "converged": False, "stop_reason": "CPU budget"}
    data["summary"] = protocol.summarise(runs)
    md = write_report(data, tmp_path).read_text()
    assert "its numbers are a lower bound" in md
