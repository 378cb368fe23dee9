"""The release binaries: `emqx_ctl` is a thin client (no broker, no RocksDB, no C++
runtime, no async runtime), and `emqx`, linked without debug info, keeps the function
symbols that `perf` and backtraces name (of Quay and of RocksDB alike)."""

import subprocess

from conftest import BIN_DIR


def defined_functions(binary):
    """Demangled names of the functions defined in `binary` (its symbol table)."""
    out = subprocess.run(["nm", "-C", "--defined-only", str(binary)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return [line.split(" ", 2)[2] for line in out.splitlines() if line.count(" ") >= 2 and line.split(" ")[1] in "tT"]


def shared_libraries(binary):
    return subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30,
                          check=True).stdout


def test_emqx_ctl_links_neither_the_broker_nor_rocksdb():
    ctl = BIN_DIR / "emqx_ctl"
    functions = defined_functions(ctl)
    assert len(functions) > 100, "emqx_ctl has no symbol table to check"
    for part in ("rocksdb", "quay::broker", "quay_storage", "tokio"):
        linked = [f for f in functions if part in f.lower()]
        assert not linked, f"emqx_ctl links {part}: {linked[:5]}"
    assert "libstdc++" not in shared_libraries(ctl), "emqx_ctl needs the C++ runtime (RocksDB?)"
    size = ctl.stat().st_size
    assert size < 4 * 1024 * 1024, f"emqx_ctl is {size} bytes"


def test_emqx_names_its_functions_for_profiling():
    functions = defined_functions(BIN_DIR / "emqx")
    assert "quay::broker::Broker::open" in functions
    assert sum(f.startswith("quay::") for f in functions) > 50
    # The check above would see RocksDB: here it is, by name.
    assert sum(f.startswith("rocksdb::") for f in functions) > 1000
