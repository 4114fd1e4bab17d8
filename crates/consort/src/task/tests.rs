//! Unit tests for `task`.
use super::*;
