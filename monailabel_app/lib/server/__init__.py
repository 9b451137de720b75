"""Hardened serving around MONAI Label: launcher, routes, validation, crash-consistent datastore."""
