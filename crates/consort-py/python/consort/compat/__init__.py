"""Compatibility modules: consort behind other libraries' names.

- :mod:`consort.compat.warp_cache`: warp_cache 0.7's public names, so switching is one import
  line (``import consort.compat.warp_cache as warp_cache``).
"""
