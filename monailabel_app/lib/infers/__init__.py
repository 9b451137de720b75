"""Infer tasks: thin ``InferTask`` classes that call ``orthofm`` through the shared model runtime."""
