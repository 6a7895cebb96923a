"""The sample generator: the generated product world, its texts and the sample catalogs.

world (what products are and how they look), texts (every title, caption and query
template), catalog (the single writer of sample catalogs and labelled query sets) and
commands (`catalens sample`). Used by the demo, training, the benchmarks and the tests.
"""
