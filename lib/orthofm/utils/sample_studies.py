"""Copy the pydicom-data demo DICOMs (a CR and an MR) into the sample-studies folder at setup time.

They come from the installed ``pydicom-data`` package (MIT), so they are not kept in git and nothing is
downloaded: ``make run`` / ``make test`` call ``python -m orthofm.utils.sample_studies <folder>``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from .atomic import atomic_path
from .log import configure_logging

__all__ = ["PYDICOM_SAMPLES", "install_pydicom_samples", "pydicom_testdata_file"]

log = logging.getLogger(__name__)

# file name -> what it is (shown in logs; ATTRIBUTION.md in the folder names the licence)
PYDICOM_SAMPLES = {
    "RG3_UNCR.dcm": "Fuji CR of a lower leg (AP), 1760x1760, MONOCHROME1, uncompressed",
    "MR2_UNCR.dcm": "1.5T shoulder MR slice, 1024x1024, uncompressed",
}


def pydicom_testdata_file(name: str) -> Path:
    """Local path of a ``pydicom-data`` file; never downloads (raises if the package lacks it)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    if not found:
        raise FileNotFoundError(
            f"{name} not found in the installed pydicom-data package; install it with "
            f"`pip install pydicom-data==1.0.0` (it is pinned in requirements.txt)"
        )
    return Path(found)


def install_pydicom_samples(dest: str | Path, names: Sequence[str] = tuple(PYDICOM_SAMPLES)) -> list[Path]:
    """Copy ``names`` into ``dest`` (atomically, skipping files already identical); returns their paths."""
    folder = Path(dest)
    if not folder.is_dir():
        raise NotADirectoryError(f"sample-studies folder {str(folder)!r} does not exist")
    written = []
    for name in names:
        source = pydicom_testdata_file(name)
        target = folder / name
        if target.exists() and target.read_bytes() == source.read_bytes():
            log.debug("%s is up to date", target)
        else:
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            log.info("copied %s (%s) -> %s", name, PYDICOM_SAMPLES.get(name, "pydicom-data"), target)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="sample-studies folder (e.g. monailabel_app/sample_studies)")
    args = parser.parse_args(argv)
    configure_logging()
    install_pydicom_samples(args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
