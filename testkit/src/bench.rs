//! `testkit bench`.
