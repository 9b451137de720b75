"""DICOM de-identification on ingest (``--conf deidentify true``), after DICOM PS3.15 Annex E's basic profile.

Applied to uploads before they are stored: identifying attributes are removed or emptied, private tags are
removed, and UIDs are replaced by new ones derived from the old UID and a per-folder salt, so the slices of one
series stay one series. The pixel data is not touched (burnt-in annotations are out of scope: say so to users).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

# Emptied (Z: type 2, must stay present) and removed (X) attributes: the basic profile's common subset for
# radiographs and MR. UIDs (U) are handled separately below.
EMPTY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
    "ReferringPhysicianName", "StudyDate", "StudyTime", "ContentDate", "ContentTime",
)
REMOVE = (
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientBirthTime",
    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "PatientAge", "PatientSize",
    "PatientWeight", "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "CountryOfResidence", "RegionOfResidence",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName", "PhysiciansOfRecord",
    "RequestingPhysician", "ScheduledPerformingPhysicianName", "DeviceSerialNumber", "SeriesDate",
    "SeriesTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime", "InstanceCreationDate",
    "InstanceCreationTime", "StudyDescription", "ImageComments", "RequestAttributesSequence",
    "IssuerOfPatientID", "PatientInsurancePlanCodeSequence", "ReferencedPatientSequence",
    "ReferencedStudySequence", "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepDescription", "RequestedProcedureID",
    "ScheduledProcedureStepID", "CurrentPatientLocation", "PatientState", "PregnancyStatus",
    "TextComments", "DerivationDescription", "IssuerOfAccessionNumberSequence",
)
UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _new_uid(old: str, salt: bytes) -> str:
    return generate_uid(entropy_srcs=[hashlib.sha256(salt + old.encode()).hexdigest()])


def deidentify_dataset(ds: Dataset, salt: bytes) -> Dataset:
    for kw in EMPTY:
        if kw in ds:
            ds.data_element(kw).value = ""
    for kw in REMOVE:
        if kw in ds:
            delattr(ds, kw)
    ds.remove_private_tags()
    for kw in UIDS:
        if kw in ds and ds.data_element(kw).value:
            new = _new_uid(str(ds.data_element(kw).value), salt)
            ds.data_element(kw).value = new
            if kw == "SOPInstanceUID" and getattr(ds, "file_meta", None) is not None:
                ds.file_meta.MediaStorageSOPInstanceUID = new
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "OrthoFM: PS3.15 basic profile subset (identifiers emptied/removed, UIDs replaced)"
    return ds


def deidentify_file(path: Path, salt: bytes | None = None) -> None:
    """Rewrite one DICOM file de-identified (in the request's private temp folder, before storing)."""
    salt = salt if salt is not None else hashlib.sha256(str(path.parent).encode()).digest()
    ds = pydicom.dcmread(str(path))
    deidentify_dataset(ds, salt)
    ds.save_as(str(path), write_like_original=False)


def deidentify_folder(folder: Path) -> None:
    """All files of one series with one salt, so UIDs stay consistent across slices."""
    salt = hashlib.sha256(str(folder).encode()).digest()
    for p in sorted(folder.iterdir()):
        if p.is_file():
            deidentify_file(p, salt)
