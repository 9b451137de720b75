"""Weight-import errors that tell the user what the file looks like and exactly what does not fit.

A half-loaded backbone produces plausible-looking but wrong features, which is worse than a crash.
Every loader therefore compares the converted state dict with the model *before* loading and raises
one :class:`WeightFormatError` listing missing keys, unexpected keys and shape mismatches together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["KeyReport", "WeightFormatError", "compare_state_dict", "strict_load"]

_SHOW = 5  # how many example keys an error message lists per category


class WeightFormatError(ValueError):
    """A weights file/folder that is not a supported format, is damaged, or does not fit the architecture."""

    def __init__(self, message: str, *, path: str | None = None, looks_like: str | None = None,
                 report: KeyReport | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.looks_like = looks_like
        self.report = report


@dataclass
class KeyReport:
    """The differences between a checkpoint's keys/shapes and a model's."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_first(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {_first(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(f"{k} (file {tuple(a)} vs model {tuple(b)})" for k, a, b in self.mismatched[:_SHOW])
            more = f", ... {len(self.mismatched) - _SHOW} more" if len(self.mismatched) > _SHOW else ""
            parts.append(f"{len(self.mismatched)} shape mismatch(es): {shown}{more}")
        return "; ".join(parts) if parts else "keys and shapes match"


def _first(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def compare_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> KeyReport:
    """Keys/shapes of ``state_dict`` against ``model.state_dict()`` (works on meta-device models too)."""
    expected = model.state_dict()
    report = KeyReport()
    report.missing = [k for k in expected if k not in state_dict]
    report.unexpected = [k for k in state_dict if k not in expected]
    for k, v in state_dict.items():
        if k in expected and tuple(v.shape) != tuple(expected[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(expected[k].shape)))
    return report


def strict_load(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, looks_like: str, path: str, arch: str
) -> None:
    """Load all of ``state_dict`` into ``model`` or raise a :class:`WeightFormatError` naming every problem."""
    report = compare_state_dict(model, state_dict)
    if not report.ok:
        raise WeightFormatError(
            f"{path}: looks like {looks_like}, but it does not fit architecture {arch} "
            f"(key names as the model sees them): {report.describe()}. "
            "Pass arch=... (CLI: --arch) if the architecture was guessed wrong.",
            path=path, looks_like=looks_like, report=report,
        )
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightFormatError(
            f"{path}: looks like {looks_like}, but {len(bad)} tensor(s) contain NaN/Inf: {_first(bad)}",
            path=path, looks_like=looks_like,
        )
    model.load_state_dict(dict(state_dict), strict=True)
