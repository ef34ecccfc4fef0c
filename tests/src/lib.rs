//! podwire's privileged end-to-end tests live in `tests/`: each builds throwaway node
//! and pod namespaces with `podwire-testkit` and drives the real binaries, kernel and
//! runtimes. Run them with `make test` (as root); `cargo test` in the workspace root runs
//! only the unprivileged unit tests.
#![forbid(unsafe_code)]
