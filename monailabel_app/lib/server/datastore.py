"""Datastores (placeholder until the crash-consistent one lands)."""

from __future__ import annotations

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore


def init_datastore(studies, server_settings):
    return LocalDatastore(studies, extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
                          auto_reload=server_settings.auto_reload)


def init_dicomweb_datastore(studies):
    raise NotImplementedError
