"""/activelearning, /train and /scoring with known names and validated params.

Training and scoring run as MONAI Label background subprocesses (``AsyncTask``), one at a time per kind; the
strategy runs in a worker thread so a slow selection never blocks the event loop.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.concurrency import run_in_threadpool
from monailabel.utils.async_tasks.task import AsyncTask

from .errors import Busy, InvalidParams, NotFound
from .validation import Param, check_params, checked_object, known_name, params_from_config

log = logging.getLogger("orthofm.server.tasks")
router = APIRouter()
OptionalBody = Annotated[dict | None, Body()]

TRAIN_COMMON = {"client_id": Param((str, type(None)))}
SCORING_COMMON = {"client_id": Param((str, type(None)))}


def _accepted_strategy_params(strategy: Any) -> dict[str, Param]:
    return {"client_id": Param((str, type(None))), **getattr(strategy, "params", {})}


@router.post("/activelearning/{strategy}")
async def next_sample(request: Request, strategy: str, params: OptionalBody = None) -> dict:
    instance = request.app.state.instance
    strategy = known_name(strategy, instance._strategies, "strategy")
    p = check_params(checked_object(params or {}), _accepted_strategy_params(instance._strategies[strategy]),
                     f"strategy {strategy!r}")

    def select() -> dict:
        result = instance.next_sample({"strategy": strategy, **p})
        if not result:
            return {}
        image_id = result["id"]
        d = instance.datastore()
        info = d.get_image_info(image_id)
        served = dict(info.get("strategy", {}))
        served[strategy] = {"ts": int(time.time()), "client_id": p.get("client_id")}
        try:
            d.update_image_info(image_id, {"strategy": served})
            info["strategy"] = served
        except Exception:  # noqa: BLE001 - bookkeeping only (a DICOMweb series not cached yet)
            log.warning("could not record the selection time of the next sample")
        result.update(info)
        return result

    return await run_in_threadpool(select)


def _run(kind: str, request_: dict, params: dict, enqueue: bool) -> dict:
    res, detail = AsyncTask.run(kind, request=request_, params=params, enqueue=enqueue)
    if res is None:
        raise Busy(detail or f"a {kind} task is already running")
    return res


@router.post("/train/{model}")
def train(request: Request, model: str, params: OptionalBody = None, run_sync: bool = False,
          enqueue: bool = False) -> dict:
    instance = request.app.state.instance
    model = known_name(model, instance._trainers, "trainer")
    accepted = {**TRAIN_COMMON, **params_from_config(instance._trainers[model].config())}
    p = check_params(checked_object(params or {}), accepted, f"trainer {model!r}")
    if run_sync:
        raise InvalidParams("run_sync is not supported: training always runs in the background")
    return _run("train", {"model": model}, p, enqueue)


@router.get("/train/")
@router.get("/train", include_in_schema=False)
def train_status(all: bool = False, check_if_running: bool = False) -> Any:
    res, detail = AsyncTask.status("train", all, check_if_running)
    if res is None:
        raise NotFound(detail or "no training task")
    return _public_task(res)


@router.delete("/train/")
@router.delete("/train", include_in_schema=False)
def train_stop() -> Any:
    return _public_task(AsyncTask.stop("train")) or {}


@router.post("/scoring/{method}")
def scoring(request: Request, method: str, params: OptionalBody = None) -> dict:
    instance = request.app.state.instance
    method = known_name(method, instance._scoring_methods, "scoring method")
    accepted = {**SCORING_COMMON, **getattr(instance._scoring_methods[method], "params", {})}
    p = check_params(checked_object(params or {}), accepted, f"scoring method {method!r}")
    return _run("scoring", {"method": method}, p, False)


@router.get("/scoring/")
@router.get("/scoring", include_in_schema=False)
def scoring_status(all: bool = False, check_if_running: bool = False) -> Any:
    res, detail = AsyncTask.status("scoring", all, check_if_running)
    if res is None:
        raise NotFound(detail or "no scoring task")
    return _public_task(res)


@router.delete("/scoring/")
@router.delete("/scoring", include_in_schema=False)
def scoring_stop() -> Any:
    return _public_task(AsyncTask.stop("scoring")) or {}


def _public_task(task: Any) -> Any:
    """Task records as MONAI Label returns them (deque of log lines made a list)."""
    if isinstance(task, list):
        return [_public_task(t) for t in task]
    if isinstance(task, dict):
        out = dict(task)
        if "details" in out:
            out["details"] = list(out["details"])
        return out
    return task


def stop_background_tasks() -> None:
    """On shutdown: no orphaned train/scoring subprocess keeps running after Ctrl-C."""
    for kind in ("train", "scoring"):
        try:
            while AsyncTask.stop(kind):
                pass
        except Exception:
            log.exception("stopping %s subprocess failed", kind)
