//! `segment`: the bridge cache's durable append rate against the disk's own fsync
//! rate, in the same run (tools/bench/bridge.sh).
//!
//! `fsync-rate` writes 4 KiB and fdatasyncs it, in a loop, for a fixed time: what the
//! device allows one waiter. `segment-append` appends records to a durable
//! `SegmentQueue` from `--producers` threads, each waiting for its record to be
//! durable before the next (as a publisher waits for its PUBACK): with one producer
//! it can go no faster than one sync per record; with many, group commit shares each
//! sync among them.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use quay_storage::segment::{QueueConfig, SegmentQueue};

use crate::measure::{Better, Figure};

#[derive(Debug, Clone, clap::Args)]
pub struct FsyncRateArgs {
    /// A directory on the disk to measure (a file is written there and removed).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct SegmentAppendArgs {
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    #[arg(long, default_value_t = 1)]
    pub producers: u64,
    /// Stop early after this long (the figure is over what was appended).
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
}

pub fn fsync_rate(args: &FsyncRateArgs) -> Result<Vec<Figure>> {
    std::fs::create_dir_all(&args.dir)?;
    let path = args.dir.join("fsync-rate.bin");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let block = vec![0x5au8; 4096];
    let limit = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < limit {
        file.write_at(&block, (syncs % 256) * 4096)?;
        file.sync_data()?;
        syncs += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(vec![Figure::new(
        "device fdatasync",
        syncs as f64 / elapsed,
        "syncs/s",
        Better::Higher,
    )
    .with_note(format!(
        "4 KiB write + fdatasync, {syncs} in {elapsed:.2}s"
    ))])
}

pub fn append(args: &SegmentAppendArgs) -> Result<Vec<Figure>> {
    let _ = std::fs::remove_dir_all(&args.dir);
    let queue = Arc::new(SegmentQueue::open(&QueueConfig {
        dir: Some(args.dir.clone()),
        seg_bytes: 64 << 20,
        max_total_bytes: 0,
        durable: true,
    })?);
    let producers = args.producers.max(1);
    let per = args.records / producers;
    let payload = Arc::new(vec![0x42u8; args.payload]);
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|_| {
            let (queue, payload) = (queue.clone(), payload.clone());
            std::thread::spawn(move || -> Result<u64> {
                let mut done = 0;
                while done < per && Instant::now() < deadline {
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    queue.append(
                        &payload,
                        Some(Box::new(move |ok| {
                            let _ = tx.send(ok);
                        })),
                    )?;
                    anyhow::ensure!(rx.recv()?, "an append was not made durable");
                    done += 1;
                }
                Ok(done)
            })
        })
        .collect();
    let mut appended = 0;
    for t in threads {
        appended += t
            .join()
            .map_err(|_| anyhow::anyhow!("a producer panicked"))??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(queue);
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(vec![Figure::new(
        &format!("durable appends, {producers} producers"),
        appended as f64 / elapsed,
        "records/s",
        Better::Higher,
    )
    .with_note(format!(
        "{appended} records of {} bytes in {elapsed:.2}s, each producer waiting for its record's sync",
        args.payload
    ))])
}
