"""Logging for the server: one format, and patient identifiers scrubbed from every record.

The first defence is not logging request contents at all (ids and status only). The second is this filter:
whenever the server reads a DICOM header it registers the patient's name, id and birth date, and every log
record (ours, MONAI Label's, uvicorn's) is scrubbed of those strings before any handler writes it.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
REDACTED = "[redacted]"
# DICOM attributes that identify a patient (PS3.15 basic profile subset that a log line could carry).
PHI_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "OtherPatientNames",
    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "ReferringPhysicianName",
    "InstitutionName", "AccessionNumber", "IssuerOfPatientID", "MilitaryRank", "PatientBirthName",
)


class PhiRedactor(logging.Filter):
    """Replaces registered identifier strings in log records; bounded memory (LRU of values)."""

    def __init__(self, capacity: int = 20000) -> None:
        super().__init__()
        self._values: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None

    def register(self, values: Iterable[object]) -> None:
        changed = False
        with self._lock:
            for v in values:
                for s in _variants(v):
                    if s not in self._values:
                        self._values[s] = None
                        changed = True
                    self._values.move_to_end(s)
            while len(self._values) > self._capacity:
                self._values.popitem(last=False)
                changed = True
            if changed:
                self._pattern = None

    def scrub(self, text: str) -> str:
        with self._lock:
            if not self._values:
                return text
            if self._pattern is None:
                alts = sorted(self._values, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(a) for a in alts), re.IGNORECASE)
            pattern = self._pattern
        return pattern.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string must not kill logging
            return True
        scrubbed = self.scrub(message)
        if scrubbed != message or record.args:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = self.scrub(str(exc))
            if text != str(exc):  # the traceback would repeat the identifier: keep only the scrubbed line
                record.exc_info = None
                record.exc_text = None
                record.msg = f"{record.msg} ({type(exc).__name__}: {text})"
        return True


def _variants(value: object) -> list[str]:
    """The forms an identifier takes in text: raw, PN components joined by spaces, without separators."""
    s = str(value).strip() if value is not None else ""
    if len(s) < 3:
        return []
    out = {s}
    if "^" in s:
        parts = [p for p in s.split("^") if p]
        out.add(" ".join(parts))
        out.add(" ".join(reversed(parts)))
        out.update(p for p in parts if len(p) >= 3)
    return sorted(out)


_REDACTOR = PhiRedactor()


def redactor() -> PhiRedactor:
    """The process-wide redactor the log handlers use (one per process, like the handlers themselves)."""
    return _REDACTOR


def register_dicom_identifiers(ds: object) -> None:
    """Register the identifying values of a pydicom Dataset so no log line can show them."""
    values = []
    for kw in PHI_KEYWORDS:
        v = getattr(ds, kw, None)
        if v:
            values.extend(v if isinstance(v, (list, tuple)) else [v])
    if values:
        _REDACTOR.register(values)


def install_log_filters(level: str = "info") -> None:
    """One stderr handler on the root logger with the redactor; uvicorn/MONAI Label loggers propagate to it."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(_REDACTOR)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "monailabel"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    for noisy in ("filelock", "watchdog", "PIL", "httpx", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
