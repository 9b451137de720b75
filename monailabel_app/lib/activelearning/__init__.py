"""Active-learning strategies served at ``/activelearning/{name}`` (maths in ``orthofm.active``)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.tasks.activelearning.random import Random


def build_strategies(runtime: Any) -> dict[str, Strategy]:
    return {"random": Random()}
