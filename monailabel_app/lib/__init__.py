"""OrthoFM MONAI Label app wiring (imported as ``lib`` with the app folder on the path, MONAI Label's layout)."""
