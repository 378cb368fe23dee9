//! Link `emqx_ctl` without debug info (mostly std's), as the broker's `build.rs` does
//! for `emqx`; `QUAY_KEEP_DEBUGINFO=1` keeps it.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=QUAY_KEEP_DEBUGINFO");
    let keep = std::env::var_os("QUAY_KEEP_DEBUGINFO").is_some_and(|v| !v.is_empty() && v != "0");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && !keep {
        println!("cargo::rustc-link-arg-bins=-Wl,--strip-debug");
    }
}
