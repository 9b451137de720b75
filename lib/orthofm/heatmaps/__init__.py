"""Zero-shot abnormality heatmaps: MAE reconstruction error (SKELEX) and patch novelty vs a normal bank
(AnomalyDINO / PatchCore), mapped back to the input's pixel grid. See docs/heatmaps.md."""

from .bank import BankCard, BankError, NormalBank
from .build import BankBuildConfig, build_bank, build_bank_from_folder, split_calibration
from .coreset import greedy_coreset
from .engine import METHODS, HeatmapConfig, HeatmapEngine, HeatmapResult, PatchScores
from .factory import create_engine, default_bank_path
from .fingerprint import backbone_fingerprint, backbone_id
from .masks import complementary_noise, lattice_partition, passes_for_ratio
from .recon import ReconConfig, ReconMaps, reconstruction_error
from .regions import Region, find_regions
from .scores import normal_rank, normal_scale, top_fraction_mean

__all__ = [
    "METHODS",
    "BankBuildConfig",
    "BankCard",
    "BankError",
    "HeatmapConfig",
    "HeatmapEngine",
    "HeatmapResult",
    "NormalBank",
    "PatchScores",
    "ReconConfig",
    "ReconMaps",
    "Region",
    "backbone_fingerprint",
    "backbone_id",
    "build_bank",
    "build_bank_from_folder",
    "complementary_noise",
    "create_engine",
    "default_bank_path",
    "find_regions",
    "greedy_coreset",
    "lattice_partition",
    "normal_rank",
    "normal_scale",
    "passes_for_ratio",
    "reconstruction_error",
    "split_calibration",
    "top_fraction_mean",
]
