// Link the pause binary with no C runtime: our own `_start` (src/sys.rs), no libc, static,
// no interpreter. Only the `pause` bin gets these flags; the library and its tests link normally.
fn main() {
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bin=pause={arg}");
    }
}
