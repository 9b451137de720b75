"""Honest evaluation: patient-grouped splits, metrics, the label-efficiency protocol, baselines, reports."""
