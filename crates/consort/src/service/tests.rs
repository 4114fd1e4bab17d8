//! Unit tests for `service`.
use super::*;
