"""Benchmarks that ship with the package: `python -m consort.bench cache [--json]`.

`cache` runs warp_cache's own benchmark loop through consort's decorator and its peers side by
side in one run (see `consort.bench.cache`); peers that are not installed report null.
"""
