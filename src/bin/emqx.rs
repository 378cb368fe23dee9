//! `emqx`: start, stop, run in the foreground, ping — as EMQX's start script does.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use quay::config::Config;
use quay::ctl;

/// mimalloc: less fragmentation per idle connection and cheaper small allocations
/// than glibc's per-thread arenas (measured with tools/bench); what a connection
/// keeps for its whole life comes from a heap of its own (`quay::memory`).
#[global_allocator]
static GLOBAL: Allocator = Allocator;

struct Allocator;

thread_local! {
    /// This thread's heap for long-lived allocations (`quay::memory`), made on first use.
    static LONG_LIVED_HEAP: Cell<*mut libmimalloc_sys::mi_heap_t> =
        const { Cell::new(std::ptr::null_mut()) };
}

impl Allocator {
    /// This thread's long-lived heap, if inside `quay::memory::long_lived`.
    fn long_lived_heap() -> Option<*mut libmimalloc_sys::mi_heap_t> {
        if !quay::memory::long_lived_now() {
            return None;
        }
        LONG_LIVED_HEAP
            .try_with(|heap| {
                if heap.get().is_null() {
                    // SAFETY: no arguments; mimalloc allocates the heap itself (not
                    // through this allocator). A null result is handled below.
                    heap.set(unsafe { libmimalloc_sys::mi_heap_new() });
                }
                heap.get()
            })
            .ok()
            .filter(|heap| !heap.is_null())
    }
}

// SAFETY: every block comes from mimalloc (the default heap or this thread's
// long-lived one), and mimalloc frees and reallocates a block whichever heap of
// whichever thread it came from; a heap is only allocated from by its own thread.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::long_lived_heap() {
            // SAFETY: a live heap of this thread; layout as GlobalAlloc::alloc gets it.
            Some(heap) => unsafe {
                libmimalloc_sys::mi_heap_malloc_aligned(heap, layout.size(), layout.align()).cast()
            },
            // SAFETY: forwarded as is.
            None => unsafe { mimalloc::MiMalloc.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (long-lived objects are not made zeroed).
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from mimalloc (see above).
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match Self::long_lived_heap() {
            // SAFETY: `ptr` came from mimalloc (see above), `heap` is this thread's.
            Some(heap) => unsafe {
                libmimalloc_sys::mi_heap_realloc_aligned(heap, ptr.cast(), new_size, layout.align())
                    .cast()
            },
            // SAFETY: `ptr` came from mimalloc (see above).
            None => unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) },
        }
    }
}

#[derive(Parser)]
#[command(
    name = "emqx",
    version,
    about = "Quay, a durable MQTT broker (EMQX-compatible commands)"
)]
struct Cli {
    /// Config file (default: ./etc/emqx.conf, else the etc/ of the release this binary is in)
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start as a daemon; returns once the listeners accept connections
    Start,
    /// Stop the running node gracefully
    Stop,
    /// Run in the foreground with logs on the console
    Console,
    /// Run in the foreground
    Foreground,
    /// Check that the node is running
    Ping,
}

fn load(path: Option<PathBuf>) -> Result<Config> {
    let path = path.unwrap_or_else(Config::default_file);
    let env: Vec<(String, String)> = std::env::vars().collect();
    Config::load(&path, &env).map_err(|e| anyhow::anyhow!("{e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(cli.config.clone()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("emqx: {e:#}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Cmd::Console | Cmd::Foreground => foreground(config),
        Cmd::Start => start(&config, cli.config.as_deref()),
        Cmd::Stop => stop(&config),
        Cmd::Ping => ping(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("emqx: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// mimalloc returns freed pages to the OS lazily, from inside later allocator calls:
/// a worker that goes quiet (every connection hibernated, say) would keep what its
/// tasks freed. So a worker about to sleep collects, at most once a second.
fn return_free_memory() {
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            last.set(Some(now));
            // SAFETY: no arguments to uphold; collects this thread's heap.
            unsafe { libmimalloc_sys::mi_collect(false) };
            let long_lived = LONG_LIVED_HEAP.try_with(Cell::get).unwrap_or_default();
            if !long_lived.is_null() {
                // SAFETY: this thread's own live heap (heaps are never deleted).
                unsafe { libmimalloc_sys::mi_heap_collect(long_lived, false) };
            }
        }
    });
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("quay")
        .on_thread_park(return_free_memory)
        .build()
        .context("starting the async runtime")
}

fn foreground(config: Config) -> Result<()> {
    quay::logging::init(&config.log).context("opening the log")?;
    runtime()?.block_on(quay::node::run(config))?;
    Ok(())
}

fn call(config: &Config, args: &[&str]) -> std::io::Result<ctl::Reply> {
    let socket = ctl::socket_path(&config.node.data_dir);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    quay_ctl::call(&socket, &args, Duration::from_secs(10))
}

fn ping(config: &Config) -> Result<()> {
    match call(config, &["ping"]) {
        Ok(r) => {
            print!("{}", r.output);
            Ok(())
        }
        Err(_) => bail!("Node '{}' not responding to pings.", config.node.name),
    }
}

fn start(config: &Config, config_path: Option<&Path>) -> Result<()> {
    if call(config, &["ping"]).is_ok() {
        bail!("Node '{}' is already running!", config.node.name);
    }
    std::fs::create_dir_all(&config.log.dir).context("creating log dir")?;
    let out_path = config.log.dir.join("emqx.out");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .with_context(|| format!("opening {}", out_path.display()))?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut cmd = Command::new(exe);
    if let Some(path) = config_path {
        cmd.arg("--config").arg(path);
    } else {
        cmd.arg("--config").arg(&config.config_file);
    }
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .arg("foreground")
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .context("spawning the node")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!(
                "node exited during start ({status}); see {}",
                out_path.display()
            );
        }
        if call(config, &["ping"]).is_ok() {
            println!("quay {} is started successfully!", ctl::VERSION);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("node did not start within 120s; see {}", out_path.display())
}

fn stop(config: &Config) -> Result<()> {
    let pid_file = config.node.data_dir.join("emqx.pid");
    call(config, &["stop"])
        .map_err(|_| anyhow::anyhow!("Node '{}' not responding to pings.", config.node.name))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !pid_file.exists() && call(config, &["ping"]).is_err() {
            println!("ok");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("node did not stop within 60s")
}
