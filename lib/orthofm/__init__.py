"""OrthoFM: a musculoskeletal imaging foundation model toolkit."""

__version__ = "0.1.0"
