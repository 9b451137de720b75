# ruff: noqa: N999  (Slicer requires the <Module>Lib package name)
"""OrthoFMLib: everything the OrthoFM Slicer module does that does not need Slicer.

Plain Python (standard library + NumPy), no slicer/qt/vtk/torch imports, so it is tested outside
Slicer against a real server and can be reused by scripts.
"""

from .capabilities import ServerInfo, TaskInfo, parse_server_info
from .client import InferResponse, OrthoFMClient
from .errors import (
                     OrthoFMAuthError,
                     OrthoFMCancelled,
                     OrthoFMConnectionError,
                     OrthoFMError,
                     OrthoFMFormatError,
                     OrthoFMTimeoutError,
)
from .geometry import Geometry
from .jobs import BackgroundJob, JobSnapshot
from .nrrdfile import NrrdImage, read_nrrd, write_nrrd
from .parameters import OrthoFMParameters
from .results import (
                     ClassificationResult,
                     EmbeddingResult,
                     HeatmapResult,
                     OtherResult,
                     Segment,
                     SegmentationResult,
                     parse_classification,
                     parse_embedding,
                     parse_heatmap,
                     parse_infer_response,
                     parse_segmentation,
)
from .workflow import AnnotationSession, LocalVolume, NextSample, describe_result, encode_labelmap

__all__ = [
    "AnnotationSession", "BackgroundJob", "ClassificationResult", "EmbeddingResult", "Geometry", "HeatmapResult",
    "InferResponse", "JobSnapshot", "LocalVolume", "NextSample", "NrrdImage", "OrthoFMAuthError", "OrthoFMCancelled",
    "OrthoFMClient", "OrthoFMConnectionError", "OrthoFMError", "OrthoFMFormatError", "OrthoFMParameters",
    "OrthoFMTimeoutError", "OtherResult", "Segment", "SegmentationResult", "ServerInfo", "TaskInfo",
    "describe_result", "encode_labelmap", "parse_classification", "parse_embedding", "parse_heatmap",
    "parse_infer_response", "parse_segmentation", "parse_server_info", "read_nrrd", "write_nrrd",
]
