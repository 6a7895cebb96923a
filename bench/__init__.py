"""The benchmarks: one measure_* function per benchmark, each returning a dataclass.

machine (machine info, threads, result files), workload (generated catalogs, the model),
index / query / ann / rerank (the measurements), plots (matplotlib) and commands
(`catalens bench ...`, which formats, writes and plots the results).
"""
