//! `testkit demo`.
