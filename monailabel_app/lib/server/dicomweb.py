"""DICOMweb (e.g. Orthanc) as the image source, with labels kept in the crash-consistent local cache.

MONAI Label's ``DICOMWebDatastore`` lists series by QIDO (our default filter: CR, DX and MR, not its CT-only
default), downloads a series on first use into a cache folder and, for ``final`` labels, converts NIfTI to
DICOM SEG and STOWs it (which needs dcmqi downloaded from GitHub at start-up, and does not fit 2D radiographs or
JSON class labels). Here images come from DICOMweb, while labels of every kind are stored atomically in the
local cache (:class:`OrthoDatastore`), and nothing is downloaded at start-up. Patient ids are not copied into
the datastore JSON.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.utils.dicom import dicom_web_download_series
from pydicom.dataset import Dataset

from .datastore import OrthoDatastore, single_file

log = logging.getLogger("orthofm.dicomweb")

SERIES_INFO_FIELDS = ("StudyDate", "Modality", "BodyPartExamined", "SeriesDescription")


class OrthoDICOMWebDatastore(DICOMWebDatastore, OrthoDatastore):
    """Series from a DICOMweb server (id = SeriesInstanceUID), cached as DICOM folders; labels local."""

    def __init__(self, client: Any, search_filter: dict[str, Any], cache_path: str | None = None) -> None:
        super().__init__(client=client, search_filter=search_filter, cache_path=cache_path,
                         fetch_by_frame=False, convert_to_nifti=False)

    def get_image_uri(self, image_id: str) -> str:
        """Download the series once (into a hidden temp folder, then renamed) and return its folder."""
        if image_id not in self.list_images():
            return ""
        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        if not os.path.isdir(image_dir) or not os.listdir(image_dir):
            tmp = os.path.join(self._datastore.image_path(), f".{image_id}.download-{os.getpid()}")
            os.makedirs(tmp, exist_ok=True)
            dicom_web_download_series(None, image_id, tmp, self._client, False)
            if os.path.isdir(image_dir):
                os.rmdir(image_dir)
            os.replace(tmp, image_dir)
        if image_id not in self._datastore.objects:
            OrthoDatastore.refresh(self)
            if image_id in self._datastore.objects:
                OrthoDatastore.update_image_info(self, image_id, self._dicom_info(image_id))
        return single_file(image_dir)

    def _dicom_info(self, series_id: str) -> dict[str, Any]:
        found = self._client.search_for_series(search_filters={"SeriesInstanceUID": series_id})
        meta = Dataset.from_json(found[0]) if found else Dataset()
        info: dict[str, Any] = {"SeriesInstanceUID": series_id}
        for f in SERIES_INFO_FIELDS:  # no patient name/id/birth date in the datastore JSON
            info[f] = str(meta[f].value) if meta.get(f) else "UNK"
        return info

    # labels: local and atomic, never STOWed
    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any],
                   label_id: str = "") -> str:
        if image_id not in self._datastore.objects:
            self.get_image_uri(image_id)
        return OrthoDatastore.save_label(self, image_id, label_filename, label_tag, label_info)

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        return OrthoDatastore.get_label_uri(self, label_id, label_tag)

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return OrthoDatastore.get_labeled_images(self, label_tag, labels)

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        labeled = set(self.get_labeled_images())
        return [s for s in self.list_images() if s not in labeled]

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        return OrthoDatastore.datalist(self, full_path)

    def status(self) -> dict[str, Any]:
        st = OrthoDatastore.status(self)
        st["total"] = len(self.list_images())
        st["source"] = "dicomweb"
        return st


def make_dicomweb_datastore(url: str) -> OrthoDICOMWebDatastore:
    session = None
    user = settings.MONAI_LABEL_DATASTORE_USERNAME or settings.MONAI_LABEL_DICOMWEB_USERNAME
    password = settings.MONAI_LABEL_DATASTORE_PASSWORD or settings.MONAI_LABEL_DICOMWEB_PASSWORD
    if user and password:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(user, password)
    client = DICOMwebClientX(
        url=url,
        session=session,
        qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
    )
    cache = (settings.MONAI_LABEL_DATASTORE_CACHE_PATH or settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    log.info("DICOMweb datastore: filter %s", settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER)
    return OrthoDICOMWebDatastore(client, dict(settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER), cache or None)
