//! The pause binary: no libc, no std, no runtime. `_start` lives in `sys` and calls
//! `pause::run`; this file only supplies what a no_std binary must.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

// Link the library, which carries `_start` (feature "bin").
use pause as _;

#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo) -> ! {
    // Nothing in pause can panic on a path we know of; if it ever does, die loudly.
    pause::sys::exit(101)
}
