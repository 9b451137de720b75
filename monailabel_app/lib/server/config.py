"""Server settings in one place: what `orthofm serve` flags and `--conf` keys mean, with safe defaults.

The same dataclass is read by the launcher (bind address, token, CORS, limits) and by the app (limits,
pool sizes), so a limit is never configured twice. Values arrive as strings (MONAI Label's ``--conf``).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}

# Keys the server layer understands; every other --conf key is passed to the app / task configs.
SERVER_KEYS = (
    "token", "token_file", "cors_origins", "max_upload_mb", "max_megapixels", "max_megavoxels",
    "infer_workers", "threads", "max_batch", "batch_wait_ms", "deidentify", "auto_reload", "log_level",
)


def parse_bool(value: str | bool, key: str) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ValueError(f"--conf {key}: expected true/false, got {value!r}")


def _parse_int(value: str, key: str, lo: int, hi: int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ValueError(f"--conf {key}: expected an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise ValueError(f"--conf {key}: {n} is outside [{lo}, {hi}]")
    return n


def _parse_float(value: str, key: str, lo: float, hi: float) -> float:
    try:
        x = float(str(value).strip())
    except ValueError:
        raise ValueError(f"--conf {key}: expected a number, got {value!r}") from None
    if not lo <= x <= hi:
        raise ValueError(f"--conf {key}: {x} is outside [{lo}, {hi}]")
    return x


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; anything else (incl. 0.0.0.0) is a network bind."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_workers() -> int:
    """Inference threads: one per core the process may use (torch runs 1 thread each)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return max(1, cores)


@dataclass
class ServerSettings:
    """Limits, access control and concurrency of one server process."""

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_upload_mb: float = 512.0
    max_megapixels: float = 40.0  # 2D: a 7000x5000 stitched long-leg film is 35 MP
    max_megavoxels: float = 160.0  # 3D: 512x512x600
    infer_workers: int = field(default_factory=default_workers)
    threads: int = 1  # torch intra-op threads per inference worker
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    deidentify: bool = False
    auto_reload: bool = True
    log_level: str = "info"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_pixels_2d(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @property
    def max_voxels_3d(self) -> int:
        return int(self.max_megavoxels * 1_000_000)

    @property
    def auth_required(self) -> bool:
        return bool(self.token)

    @classmethod
    def from_conf(cls, conf: dict[str, str], host: str = "127.0.0.1", port: int = 8000) -> ServerSettings:
        """Build from ``--conf`` pairs (+ ``ORTHOFM_API_TOKEN``); raises ValueError naming a bad key."""
        s = cls(host=host, port=port)
        token = conf.get("token") or os.environ.get("ORTHOFM_API_TOKEN") or None
        if conf.get("token_file"):
            path = Path(conf["token_file"]).expanduser()
            if not path.is_file():
                raise ValueError(f"--conf token_file: {path} does not exist")
            token = path.read_text().strip()
        if token is not None and len(token) < 16:
            raise ValueError("the API token must be at least 16 characters (e.g. `openssl rand -hex 32`)")
        s.token = token
        if conf.get("cors_origins"):
            origins = [o.strip().rstrip("/") for o in conf["cors_origins"].split(",") if o.strip()]
            for o in origins:
                if o == "*" or not (o.startswith(("http://", "https://"))):
                    raise ValueError(f"--conf cors_origins: {o!r} is not an http(s) origin ('*' is not allowed)")
            s.cors_origins = origins
        if "max_upload_mb" in conf:
            s.max_upload_mb = _parse_float(conf["max_upload_mb"], "max_upload_mb", 0.001, 65536)
        if "max_megapixels" in conf:
            s.max_megapixels = _parse_float(conf["max_megapixels"], "max_megapixels", 0.001, 1000)
        if "max_megavoxels" in conf:
            s.max_megavoxels = _parse_float(conf["max_megavoxels"], "max_megavoxels", 0.001, 10000)
        if "infer_workers" in conf:
            s.infer_workers = _parse_int(conf["infer_workers"], "infer_workers", 1, 256)
        if "threads" in conf:
            s.threads = _parse_int(conf["threads"], "threads", 1, 256)
        if "max_batch" in conf:
            s.max_batch = _parse_int(conf["max_batch"], "max_batch", 1, 256)
        if "batch_wait_ms" in conf:
            s.batch_wait_ms = _parse_float(conf["batch_wait_ms"], "batch_wait_ms", 0, 1000)
        if "deidentify" in conf:
            s.deidentify = parse_bool(conf["deidentify"], "deidentify")
        if "auto_reload" in conf:
            s.auto_reload = parse_bool(conf["auto_reload"], "auto_reload")
        if "log_level" in conf:
            s.log_level = conf["log_level"].lower()
        return s

    def check_bind(self) -> None:
        """Refuse to expose the server on a network without authentication."""
        if not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"refusing to listen on {self.host}: binding to a non-loopback address needs an API token "
                "(--conf token_file PATH or ORTHOFM_API_TOKEN); see docs/security.md"
            )

    def public_dict(self) -> dict:
        """For /info: every setting except the secret."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "token"}
        d["auth_required"] = self.auth_required
        return d
