//! Fake-world harness (see README).
