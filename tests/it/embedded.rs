//! Tests for the embedded module; see SPEC.md.
