//! The documented exit codes of `consort`: part of its interface, since scripts rely on
//! them. `run` uses them all; `map`, `env`, `cache` and `bench` a few.

/// The task completed.
pub const COMPLETE: u8 = 0;
/// The task failed, or its script cancelled it.
pub const FAILED: u8 = 1;
/// Usage error, or the worker could not be started.
pub const USAGE: u8 = 2;
/// The worker crashed before the task ended.
pub const CRASHED: u8 = 3;
/// `--timeout` passed; the task was cancelled with the kill escalation.
pub const TIMED_OUT: u8 = 124;
/// Interrupted by Ctrl-C (or SIGTERM, or SIGHUP).
pub const INTERRUPTED: u8 = 130;
