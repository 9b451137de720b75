"""The module's user-facing settings as one dataclass, with a round trip to Slicer's QSettings.

QSettings hands back strings (or whatever type the platform stored), so every field is converted
explicitly and bad stored values fall back to the default instead of breaking the module at start.
The token is only persisted when the user ticks "remember token" (QSettings is plain text).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

SETTINGS_PREFIX = "OrthoFM/"


@dataclass
class OrthoFMParameters:
    server_url: str = "http://127.0.0.1:8000"
    token: str = ""
    remember_token: bool = False
    timeout_s: float = 30.0
    infer_timeout_s: float = 300.0
    task: str = ""
    strategy: str = "random"
    upload_to_datastore: bool = True
    heatmap_opacity: float = 0.5
    heatmap_threshold: float = 0.0
    final_label_tag: str = "final"
    class_label_tag: str = "cls"
    train_task: str = ""
    train_max_epochs: int = 10
    train_poll_s: float = 2.0
    download_dir: str = ""

    def validate(self) -> list[str]:
        """Problems a person can fix, in words; empty when the parameters are usable."""
        problems = []
        parsed = urllib.parse.urlsplit(self.server_url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            problems.append(f"Server URL '{self.server_url}' should look like http://127.0.0.1:8000")
        if self.timeout_s <= 0 or self.infer_timeout_s <= 0:
            problems.append("Timeouts must be positive numbers of seconds")
        if not 0.0 <= self.heatmap_opacity <= 1.0:
            problems.append("Heatmap opacity must be between 0 and 1")
        for name in ("final_label_tag", "class_label_tag"):
            tag = getattr(self, name)
            if not tag or not all(c.isalnum() or c in "-_" for c in tag):
                problems.append(f"Label tag '{tag}' may only contain letters, digits, '-' and '_'")
        if self.train_max_epochs < 1:
            problems.append("Training needs at least 1 epoch")
        if self.train_poll_s <= 0:
            problems.append("The training poll interval must be positive")
        return problems

    def to_settings(self) -> dict[str, str]:
        """``{"OrthoFM/<field>": text}``; the token only if ``remember_token``."""
        out = {}
        for f in fields(self):
            if f.name == "token" and not self.remember_token:
                continue
            value = getattr(self, f.name)
            out[SETTINGS_PREFIX + f.name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> OrthoFMParameters:
        """Inverse of ``to_settings``; missing or unreadable values keep their defaults."""
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = SETTINGS_PREFIX + f.name
            if key not in settings or settings[key] is None:
                continue
            default = getattr(defaults, f.name)
            try:
                values[f.name] = _convert(settings[key], type(default))
            except (TypeError, ValueError):
                continue
        return dataclasses.replace(defaults, **values)


def _convert(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off", ""):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if kind is int:
        return int(float(value))
    if kind is float:
        return float(value)
    return str(value)
