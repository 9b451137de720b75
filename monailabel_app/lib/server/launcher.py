"""Start OrthoFM's MONAI Label server: environment, our FastAPI app, uvicorn, clean shutdown.

We do not go through ``monailabel start_server``: it imports ``monailabel.app`` (CORS ``*``, inference on the
event loop, every upload route unchecked). Instead MONAI Label's settings are set through the environment
(so its background train/scoring subprocesses see the same values) and :func:`lib.server.http_app.create_app`
builds the FastAPI app from MONAI Label's routers plus our hardened ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .config import ServerSettings

log = logging.getLogger("orthofm.server")

# Local datastore: single-file radiographs (DICOM, PNG, JPEG) and volumes. MRI series are folders (see datastore).
IMAGE_PATTERNS = ["*.dcm", "*.png", "*.jpg", "*.jpeg", "*.nii.gz", "*.nii", "*.nrrd"]
# DICOMweb: radiographs and MRI; MONAI Label's default filter is CT only. QIDO-RS multiple values are
# comma-separated (PS3.18 8.3.4.1; Orthanc does not accept the backslash form).
DICOMWEB_FILTER = {"Modality": "CR,DX,MR"}


@dataclass
class LaunchSpec:
    """What `orthofm serve` was asked to run."""

    studies: str
    app_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    conf: dict[str, str] = field(default_factory=dict)


def _is_remote(studies: str) -> bool:
    return studies.startswith(("http://", "https://"))


def prepare_environment(spec: LaunchSpec, settings: ServerSettings) -> dict[str, str]:
    """The MONAI Label environment (also inherited by background train/scoring subprocesses)."""
    conf = dict(spec.conf)
    env = {
        "MONAI_LABEL_APP_DIR": spec.app_dir,
        "MONAI_LABEL_STUDIES": spec.studies,
        "MONAI_LABEL_APP_CONF": json.dumps(conf),
        "MONAI_LABEL_SERVER_PORT": str(spec.port),
        "MONAI_LABEL_DATASTORE_FILE_EXT": json.dumps(IMAGE_PATTERNS),
        "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "true" if settings.auto_reload else "false",
        "MONAI_LABEL_TRACKING_ENABLED": "false",  # no mlflow runs written next to the studies
        # Scoring after every next_sample would spawn a torch subprocess per click on a 2-core box; the app
        # embeds new images in the background in-process instead (see lib/scoring/embeddings.py).
        "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
        "MONAI_LABEL_SESSIONS": "false",
        "MONAI_LABEL_AUTH_ENABLE": "false",
        "MONAI_LABEL_RELOAD_APP_LIB": "false",
        "ORTHOFM_SERVER_PID": str(os.getpid()),  # subprocesses see another pid: read-only datastore  # keep one copy of lib.* (the server layer imports it first)  # our bearer-token middleware guards every route instead
        "MONAI_LABEL_DICOMWEB_SEARCH_FILTER": os.environ.get(
            "MONAI_LABEL_DICOMWEB_SEARCH_FILTER", json.dumps(DICOMWEB_FILTER)
        ),
        "MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI": os.environ.get("MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI", "false"),
        "OMP_NUM_THREADS": str(settings.threads),
        "MKL_NUM_THREADS": str(settings.threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    pythonpath = os.environ.get("PYTHONPATH", "")
    parts = [p for p in pythonpath.split(os.pathsep) if p]
    if spec.app_dir not in parts:
        parts.insert(0, spec.app_dir)
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _private_tmpdir() -> str:
    """All request temp files go to one private folder, so nothing leaks into a shared /tmp."""
    root = os.environ.get("ORTHOFM_TMPDIR")
    if root:
        os.makedirs(root, mode=0o700, exist_ok=True)
        return root
    return tempfile.mkdtemp(prefix="orthofm-serve-")


def serve(spec: LaunchSpec) -> int:
    """Run the server in the foreground until Ctrl-C / SIGTERM; returns a process exit code."""
    import uvicorn

    settings = ServerSettings.from_conf(spec.conf, host=spec.host, port=spec.port)
    settings.check_bind()
    spec.app_dir = str(Path(spec.app_dir).resolve())
    if not (Path(spec.app_dir) / "main.py").is_file():
        raise FileNotFoundError(f"--app {spec.app_dir}: no main.py (not a MONAI Label app folder)")
    if not _is_remote(spec.studies):
        spec.studies = str(Path(spec.studies).expanduser().resolve())
        os.makedirs(spec.studies, exist_ok=True)

    os.environ.update(prepare_environment(spec, settings))
    tmp_root = _private_tmpdir()
    owns_tmp = "ORTHOFM_TMPDIR" not in os.environ
    os.environ["TMPDIR"] = tmp_root
    tempfile.tempdir = tmp_root
    if spec.app_dir not in sys.path:
        sys.path.insert(0, spec.app_dir)

    from .logs import install_log_filters

    install_log_filters(settings.log_level)
    from .http_app import create_app

    # Hand the GIL over every 1 ms instead of 5: the event loop (/info, /health, routing) then waits at most a
    # few ms behind the inference threads' Python code instead of several 5 ms slices per busy thread.
    sys.setswitchinterval(0.001)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # query strings can carry ids; our middleware logs method, route and status
        timeout_graceful_shutdown=5,
        log_config=None,
    )
    server = uvicorn.Server(config)
    log.info("OrthoFM server on http://%s:%d (studies: %s)", settings.host, settings.port,
             spec.studies if not _is_remote(spec.studies) else "DICOMweb")
    try:
        server.run()
    finally:
        if owns_tmp:
            shutil.rmtree(tmp_root, ignore_errors=True)
    return 0 if server.started else 1
