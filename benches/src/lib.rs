//! Shared setup for consort benchmarks.
