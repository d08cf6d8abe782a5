//! Property-based fuzzing of every parser that reads client input: any input
//! gives a value or a typed error, never a panic and never unbounded
//! recursion. The ordinary test run checks about 10,000 cases per parser
//! (`PROPTEST_CASES` changes that; `scripts/fuzz` runs far more), and
//! proptest prints the failing input and its seed.
