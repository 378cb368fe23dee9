//! The reader pool on a real RocksDB: answers, order against the writer, limits,
//! failures and shutdown.

use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::*;

fn open(dir: &std::path::Path, threads: usize, queue_max: usize) -> Store {
    let config = StoreConfig {
        read_threads: threads,
        read_queue_max: queue_max,
        ..StoreConfig::default()
    };
    Store::open(dir, config).expect("open store")
}

fn put_retained(store: &Store, topic: &str) {
    let msg = StoredMessage {
        topic: bytes::Bytes::copy_from_slice(topic.as_bytes()),
        payload: bytes::Bytes::from_static(b"p"),
        qos: 1,
        retain: true,
        from: "pub".into(),
        publish_ms: 1,
        expiry_ms: 0,
        properties: Default::default(),
    };
    let (tx, rx) = mpsc::channel();
    store.writer().submit(
        vec![Op::PutRetained {
            topic: msg.topic.clone(),
            msg,
        }],
        Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }),
    );
    assert!(rx.recv().unwrap());
}

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_read_sees_every_write_completed_before_it_was_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2, 16);
    put_retained(&store, "a/b");
    let (tx, rx) = mpsc::channel();
    store.reader().submit(
        |db| read::retained(db, b"a/b"),
        move |r| {
            let _ = tx.send(r.map(|m| m.map(|m| m.payload)));
        },
    );
    let got = rx.recv_timeout(WAIT).unwrap().unwrap();
    assert_eq!(got.as_deref(), Some(&b"p"[..]));
}

#[test]
fn reads_run_on_the_pool_threads_not_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2, 16);
    let (tx, rx) = mpsc::channel();
    let caller = std::thread::current().id();
    store.reader().submit(
        |_| Ok(std::thread::current().name().map(str::to_owned)),
        move |r| {
            let _ = tx.send((r.unwrap(), std::thread::current().id()));
        },
    );
    let (name, done_on) = rx.recv_timeout(WAIT).unwrap();
    assert!(name.unwrap().starts_with("quay-store-reader-"));
    assert_ne!(done_on, caller, "the completion runs on the reader thread");
}

#[test]
fn a_full_queue_refuses_at_once_with_busy() {
    let dir = tempfile::tempdir().unwrap();
    // One thread, held inside a read; one slot in the queue.
    let store = open(dir.path(), 1, 1);
    let gate = Arc::new(Barrier::new(2));
    let (started_tx, started_rx) = mpsc::channel();
    let g = gate.clone();
    store.reader().submit(
        move |_| {
            let _ = started_tx.send(());
            g.wait();
            Ok(())
        },
        |_| {},
    );
    started_rx.recv_timeout(WAIT).unwrap();
    let (tx, rx) = mpsc::channel();
    let queued = tx.clone();
    store.reader().submit(
        |_| Ok(1),
        move |r| queued.send(r.map_err(|e| e.to_string())).unwrap(),
    );
    // The queue holds one job: this one is refused, answered on this thread.
    store.reader().submit(
        |_| Ok(2),
        move |r| tx.send(r.map_err(|e| e.to_string())).unwrap(),
    );
    let refused = rx.recv_timeout(WAIT).unwrap();
    assert!(
        matches!(&refused, Err(e) if e.contains("full")),
        "{refused:?}"
    );
    assert_eq!(store.reader().refused(), 1);
    gate.wait();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), Ok(1));
}

#[test]
fn a_failing_read_answers_with_its_error_and_the_pool_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1, 16);
    let (tx, rx) = mpsc::channel();
    let t = tx.clone();
    // A client id too long for a key: the read fails with a key error.
    let long = "x".repeat(70_000);
    store.reader().submit(
        move |db| read::awaiting_rel(db, &long),
        move |r| t.send(r.map(|_| ()).map_err(|e| e.to_string())).unwrap(),
    );
    assert!(rx.recv_timeout(WAIT).unwrap().is_err());
    let t = tx.clone();
    store.reader().submit(
        |_| -> Result<()> { panic!("a read that panics") },
        move |r| t.send(r.map_err(|e| e.to_string())).unwrap(),
    );
    let panicked = rx.recv_timeout(WAIT).unwrap();
    assert!(
        matches!(&panicked, Err(e) if e.contains("panicked")),
        "{panicked:?}"
    );
    // The one thread survived both.
    store.reader().submit(
        |_| Ok(()),
        move |r| tx.send(r.map_err(|e| e.to_string())).unwrap(),
    );
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), Ok(()));
}

#[test]
fn after_shutdown_reads_are_answered_closed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2, 16);
    store.shutdown();
    let (tx, rx) = mpsc::channel();
    store.reader().submit(
        |_| Ok(()),
        move |r| tx.send(r.map_err(|e| e.to_string())).unwrap(),
    );
    let answer = rx.recv_timeout(WAIT).unwrap();
    assert!(
        matches!(&answer, Err(e) if e.contains("stopped") || e.contains("closed")),
        "{answer:?}"
    );
}

#[test]
fn dropping_the_last_store_handle_stops_the_readers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2, 16);
    let reader = store.reader().clone();
    drop(store);
    let (tx, rx) = mpsc::channel();
    reader.submit(|_| Ok(()), move |r| tx.send(r.is_err()).unwrap());
    assert!(rx.recv_timeout(WAIT).unwrap());
    // The database is closed: it opens again in the same process.
    let again = open(dir.path(), 1, 16);
    drop(again);
}
