//! Link the release binaries without debug info, keeping the symbol table.
//!
//! RocksDB's C++ is compiled with full DWARF whenever the profile has any debug info
//! (`debug = "line-tables-only"` sets cc's DEBUG), which made `emqx` 446 MB. Changing
//! the profile would rebuild RocksDB (20+ minutes), so the debug info is dropped when
//! the binaries are linked instead: function symbols stay, so `perf`, backtraces and
//! `gdb` still name functions. `QUAY_KEEP_DEBUGINFO=1 cargo build --release` links
//! them with it (Rust line tables and RocksDB's DWARF) for line-level profiling.
//! Test binaries keep their debug info.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=QUAY_KEEP_DEBUGINFO");
    let keep = std::env::var_os("QUAY_KEEP_DEBUGINFO").is_some_and(|v| !v.is_empty() && v != "0");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && !keep {
        println!("cargo::rustc-link-arg-bins=-Wl,--strip-debug");
    }
}
