//! Counting what arrived, knowing when a run is over, and turning counts, time and CPU
//! into the figures the report compares.
//!
//! Every wait here is bounded twice: by a wall-clock deadline and by a stall timeout (no
//! progress for that long means the rest is not coming, e.g. a broker dropped QoS 0).

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::Notify;

use crate::proc::CpuSample;

/// A shared counter of messages (or acks, or connections) towards a target.
pub struct Progress {
    target: u64,
    base: Instant,
    count: AtomicU64,
    duplicates: AtomicU64,
    /// Nanoseconds after `base` of the latest `add`.
    last_ns: AtomicU64,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    done: Notify,
    /// Woken on every `add`, for publishers that pace themselves on deliveries.
    advanced: Notify,
    /// With `with_marks(step)`: when the count reached each multiple of `step`.
    marks: Option<Marks>,
}

/// When a `Progress` first moved and reached each multiple of `step`: the shape of a
/// run over time (a slow start, a stall in the middle), which one rate hides.
struct Marks {
    step: u64,
    first: Mutex<Option<Instant>>,
    at: Mutex<Vec<Instant>>,
}

/// How a wait for a `Progress` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Complete,
    Stalled,
    Deadline,
}

impl Progress {
    pub fn new(target: u64) -> Progress {
        Progress {
            target,
            base: Instant::now(),
            count: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            done: Notify::new(),
            advanced: Notify::new(),
            marks: None,
        }
    }

    /// As `new`, also noting when the count reaches each multiple of `step` (see `marks`).
    pub fn with_marks(target: u64, step: u64) -> Progress {
        Progress {
            marks: Some(Marks {
                step: step.max(1),
                first: Mutex::new(None),
                at: Mutex::new(Vec::new()),
            }),
            ..Progress::new(target)
        }
    }

    /// When the count first moved, if marked and it did.
    pub fn first_mark(&self) -> Option<Instant> {
        let marks = self.marks.as_ref()?;
        *marks.first.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the count reached `step`, `2 * step`, ... (as far as it got), if marked.
    pub fn marks(&self) -> Vec<Instant> {
        match &self.marks {
            Some(m) => m.at.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            None => Vec::new(),
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    pub fn add(&self, n: u64) {
        if n == 0 {
            return;
        }
        let total = self.count.fetch_add(n, Ordering::Relaxed) + n;
        self.last_ns
            .store(self.base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if let Some(marks) = &self.marks {
            if total == n {
                *marks.first.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            }
            let crossed = total / marks.step - (total - n) / marks.step;
            if crossed > 0 {
                let now = Instant::now();
                let mut at = marks.at.lock().unwrap_or_else(|p| p.into_inner());
                at.extend(std::iter::repeat_n(now, crossed as usize));
            }
        }
        if total >= self.target {
            self.done.notify_one();
        }
        self.advanced.notify_waiters();
    }

    /// Wait until the count is at least `count` (unbounded: the scenario's wait on the
    /// other side ends the run, and dropping the task ends this wait).
    pub async fn reach(&self, count: u64) {
        loop {
            let advanced = self.advanced.notified();
            if self.count() >= count {
                return;
            }
            advanced.await;
        }
    }

    pub fn add_duplicates(&self, n: u64) {
        self.duplicates.fetch_add(n, Ordering::Relaxed);
    }

    /// Record the first error of any task and end the wait.
    pub fn fail(&self, error: &anyhow::Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| format!("{error:#}"));
        self.failed.store(true, Ordering::Relaxed);
        self.done.notify_one();
    }

    /// When the latest progress was made (or `base` if none was).
    pub fn last_progress(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }

    /// Wait until the target is reached, no progress for `stall`, or `deadline`. A task
    /// failure is returned as the error.
    pub async fn wait(&self, deadline: Instant, stall: Duration) -> Result<Ending> {
        let mut last_count = self.count();
        let mut last_change = Instant::now();
        loop {
            if self.failed.load(Ordering::Relaxed) {
                let error = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
                anyhow::bail!(error.unwrap_or_else(|| "a load task failed".into()));
            }
            let count = self.count();
            if count >= self.target {
                return Ok(Ending::Complete);
            }
            let now = Instant::now();
            if count != last_count {
                last_count = count;
                last_change = now;
            }
            if now >= deadline {
                return Ok(Ending::Deadline);
            }
            if now.duration_since(last_change) >= stall {
                return Ok(Ending::Stalled);
            }
            let tick = Duration::from_millis(100).min(deadline - now);
            let _ = tokio::time::timeout(tick, self.done.notified()).await;
        }
    }
}

/// The measured interval: wall clock and both processes' CPU from `start` to `stop`.
pub struct Interval {
    broker_pid: Option<u32>,
    started: Instant,
    cpu: CpuSample,
}

/// What an `Interval` measured.
#[derive(Debug, Clone, Copy)]
pub struct Elapsed {
    pub wall: Duration,
    pub broker_cpu: Option<Duration>,
    pub generator_cpu: Duration,
}

impl Interval {
    pub fn start(broker_pid: Option<u32>) -> Result<Interval> {
        Ok(Interval {
            broker_pid,
            cpu: CpuSample::take(broker_pid)?,
            started: Instant::now(),
        })
    }

    /// When the interval started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Ends the interval at `end` for the wall clock (e.g. the last delivery) and now for CPU.
    pub fn stop_at(&self, end: Instant) -> Result<Elapsed> {
        let cpu = CpuSample::take(self.broker_pid)?;
        let (broker_cpu, generator_cpu) = cpu.since(&self.cpu);
        Ok(Elapsed {
            wall: end.saturating_duration_since(self.started),
            broker_cpu,
            generator_cpu,
        })
    }
}

impl Elapsed {
    /// Units per second over the wall-clock interval.
    pub fn rate(&self, units: u64) -> f64 {
        units as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Broker CPU microseconds per unit, if the broker's pid is known.
    pub fn broker_cpu_us_per(&self, units: u64) -> Option<f64> {
        self.broker_cpu
            .map(|cpu| cpu.as_secs_f64() * 1e6 / units.max(1) as f64)
    }

    /// Generator CPU as a percentage of one core over the interval.
    pub fn generator_cpu_pct(&self) -> f64 {
        100.0 * self.generator_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Which direction of a figure is the good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
    /// Must be equal across brokers (e.g. lost messages, which must be 0).
    Exact,
}

/// One number one broker achieved in one scenario, as the report reads it back.
#[derive(Debug, Clone)]
pub struct Figure {
    pub scenario: String,
    pub broker: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
    pub cpu_us_per_unit: Option<f64>,
    pub generator_cpu_pct: Option<f64>,
    pub note: String,
}

impl Figure {
    pub fn new(metric: &str, value: f64, unit: &str, better: Better) -> Figure {
        Figure {
            scenario: String::new(),
            broker: String::new(),
            metric: metric.to_string(),
            value,
            unit: unit.to_string(),
            better,
            cpu_us_per_unit: None,
            generator_cpu_pct: None,
            note: String::new(),
        }
    }

    pub fn with_cpu(mut self, elapsed: &Elapsed, units: u64) -> Figure {
        self.cpu_us_per_unit = elapsed.broker_cpu_us_per(units);
        self.generator_cpu_pct = Some(elapsed.generator_cpu_pct());
        self
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Figure {
        self.note = note.into();
        self
    }

    /// One tab-separated line; `parse` reads it back.
    pub fn to_line(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let better = match self.better {
            Better::Higher => "higher",
            Better::Lower => "lower",
            Better::Exact => "exact",
        };
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.scenario,
            self.broker,
            self.metric,
            self.value,
            self.unit,
            better,
            opt(self.cpu_us_per_unit),
            opt(self.generator_cpu_pct),
            self.note.replace(['\t', '\n'], " ")
        )
    }

    pub fn parse(line: &str) -> Option<Figure> {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 9 {
            return None;
        }
        let opt = |s: &str| s.parse::<f64>().ok();
        Some(Figure {
            scenario: f[0].to_string(),
            broker: f[1].to_string(),
            metric: f[2].to_string(),
            value: f[3].parse().ok()?,
            unit: f[4].to_string(),
            better: match f[5] {
                "higher" => Better::Higher,
                "lower" => Better::Lower,
                "exact" => Better::Exact,
                _ => return None,
            },
            cpu_us_per_unit: opt(f[6]),
            generator_cpu_pct: opt(f[7]),
            note: f[8].to_string(),
        })
    }
}

/// Print each figure for a human and append it to the results file, if one is given.
pub fn record(figures: &[Figure], results: Option<&Path>) -> Result<()> {
    for f in figures {
        // For a rate, CPU per unit times units per second is the broker's share of its core.
        let cpu = match (f.cpu_us_per_unit, f.unit.ends_with("/s")) {
            (Some(c), true) => {
                format!("  broker {c:.2} µs cpu/unit, {:.0}% cpu", c * f.value / 1e4)
            }
            (Some(c), false) => format!("  broker {c:.2} µs cpu/unit"),
            (None, _) => String::new(),
        };
        let generator = f
            .generator_cpu_pct
            .map_or(String::new(), |g| format!("  generator {g:.0}% cpu"));
        let note = if f.note.is_empty() {
            String::new()
        } else {
            format!("  ({})", f.note)
        };
        println!(
            "  {} {} {}: {} {}{cpu}{generator}{note}",
            f.scenario,
            f.broker,
            f.metric,
            crate::report::human(f.value),
            f.unit
        );
    }
    if let Some(path) = results {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        for f in figures {
            writeln!(file, "{}", f.to_line())
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figure_line_round_trips() {
        let mut f = Figure::new("rate", 1234.5, "msg/s", Better::Higher).with_note("lost=0");
        f.scenario = "fanin".into();
        f.broker = "quay".into();
        f.cpu_us_per_unit = Some(3.25);
        let back = Figure::parse(&f.to_line()).unwrap();
        assert_eq!(back.metric, "rate");
        assert_eq!(back.value, 1234.5);
        assert_eq!(back.cpu_us_per_unit, Some(3.25));
        assert_eq!(back.generator_cpu_pct, None);
        assert_eq!(back.better, Better::Higher);
        assert_eq!(back.note, "lost=0");
    }

    #[tokio::test]
    async fn progress_completes_and_stalls() {
        let p = Progress::new(10);
        p.add(10);
        let far = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            p.wait(far, Duration::from_secs(5)).await.unwrap(),
            Ending::Complete
        );
        let q = Progress::new(10);
        q.add(3);
        let ending = q.wait(far, Duration::from_millis(150)).await.unwrap();
        assert_eq!(ending, Ending::Stalled);
    }

    #[test]
    fn marks_note_each_multiple_once() {
        let p = Progress::with_marks(100, 10);
        assert!(p.first_mark().is_none());
        p.add(5);
        assert!(p.marks().is_empty());
        let first = p.first_mark().expect("moved");
        p.add(5);
        p.add(25);
        let marks = p.marks();
        assert_eq!(marks.len(), 3, "10, 20 and 30 were reached");
        assert!(first <= marks[0] && marks[0] <= marks[1] && marks[1] == marks[2]);
        assert_eq!(
            p.first_mark(),
            Some(first),
            "the first move stays the first"
        );
        assert!(Progress::new(10).marks().is_empty());
    }
}
