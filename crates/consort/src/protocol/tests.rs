//! Unit tests for `protocol`.
use super::*;
