//! Tests for the proxy module; see SPEC.md.
