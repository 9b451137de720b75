"""OrthoFM benchmarks: ``benchmarks/bench_<area>.py`` modules, run together by ``benchmarks/run_all.py``."""
