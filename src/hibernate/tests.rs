use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::{Hibernator, Readable};

const WAIT: Duration = Duration::from_secs(5);

/// A hibernator whose resumed items arrive on a channel, and a connected socket pair.
fn setup() -> (Arc<Hibernator<u32>>, mpsc::Receiver<(u32, TcpStream)>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let h = Hibernator::start(
        move |item, socket| {
            let _ = tx.lock().unwrap().send((item, socket));
        },
        |_: &mut u32, _: &TcpStream| Readable::Wake,
    )
    .unwrap();
    (h, rx)
}

fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// Park `item` keeping the waker it hands out.
fn park(
    h: &Arc<Hibernator<u32>>,
    item: u32,
    socket: TcpStream,
    deadline: Option<Instant>,
) -> Arc<Mutex<Option<Waker>>> {
    let slot = Arc::new(Mutex::new(None));
    let keep = slot.clone();
    let parked = h.park(item, socket, deadline, move |w| {
        *keep.lock().unwrap() = Some(w);
        true
    });
    assert!(parked.is_ok());
    slot
}

#[test]
fn data_on_the_socket_resumes_the_item_with_its_socket() {
    let (h, rx) = setup();
    let (mut client, server) = pair();
    park(&h, 7, server, None);
    assert_eq!(h.len(), 1);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "woke without cause"
    );
    client.write_all(b"ping").unwrap();
    let (item, mut socket) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(item, 7);
    assert_eq!(h.len(), 0);
    let mut buf = [0u8; 4];
    socket.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn data_that_arrived_before_parking_resumes_at_once() {
    let (h, rx) = setup();
    let (mut client, server) = pair();
    client.write_all(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    park(&h, 1, server, None);
    assert_eq!(rx.recv_timeout(WAIT).unwrap().0, 1);
}

#[test]
fn the_peer_closing_resumes_the_item() {
    let (h, rx) = setup();
    let (client, server) = pair();
    park(&h, 2, server, None);
    drop(client);
    let (item, mut socket) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(item, 2);
    assert_eq!(socket.read(&mut [0u8; 8]).unwrap(), 0, "EOF expected");
}

#[test]
fn the_waker_resumes_the_item_once() {
    let (h, rx) = setup();
    let (_client, server) = pair();
    let waker = park(&h, 3, server, None);
    let waker = waker.lock().unwrap().take().unwrap();
    waker.wake_by_ref();
    assert_eq!(rx.recv_timeout(WAIT).unwrap().0, 3);
    // Woken already: waking again (or a socket event) resumes nothing.
    waker.wake();
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn the_deadline_resumes_the_item_and_not_before() {
    let (h, rx) = setup();
    let (_client, server) = pair();
    let start = Instant::now();
    park(&h, 4, server, Some(start + Duration::from_millis(300)));
    let (item, _) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(item, 4);
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn events_already_waiting_resume_the_item_at_once() {
    let (h, rx) = setup();
    let (_client, server) = pair();
    assert!(h.park(5, server, None, |_| false).is_ok());
    assert_eq!(rx.recv_timeout(WAIT).unwrap().0, 5);
    assert_eq!(h.len(), 0);
}

#[test]
fn shutdown_resumes_everything_and_refuses_more() {
    let (h, rx) = setup();
    let mut clients = Vec::new();
    for i in 0..10 {
        let (client, server) = pair();
        clients.push(client);
        park(
            &h,
            i,
            server,
            Some(Instant::now() + Duration::from_secs(3600)),
        );
    }
    assert_eq!(h.len(), 10);
    h.shutdown();
    let mut items: Vec<u32> = (0..10).map(|_| rx.recv_timeout(WAIT).unwrap().0).collect();
    items.sort();
    assert_eq!(items, (0..10).collect::<Vec<_>>());
    let (_client, server) = pair();
    let refused = h.park(99, server, None, |_| true);
    assert!(matches!(refused, Err((99, _))));
}

#[test]
fn many_items_wake_independently() {
    let (h, rx) = setup();
    let mut clients = Vec::new();
    for i in 0..200 {
        let (client, server) = pair();
        clients.push(client);
        park(&h, i, server, None);
    }
    // Every third peer writes; exactly those wake.
    for (i, client) in clients.iter_mut().enumerate() {
        if i % 3 == 0 {
            client.write_all(b"!").unwrap();
        }
    }
    let mut woken: Vec<u32> = (0..67).map(|_| rx.recv_timeout(WAIT).unwrap().0).collect();
    woken.sort();
    assert_eq!(woken, (0..200).step_by(3).collect::<Vec<_>>());
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(h.len(), 133);
}

/// A hibernator that answers `p` with `P` in place and wakes for anything else; an
/// item parked under 99 gets a deadline that has passed with its answer.
fn setup_answering() -> (Arc<Hibernator<u32>>, mpsc::Receiver<(u32, TcpStream)>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let h = Hibernator::start(
        move |item, socket| {
            let _ = tx.lock().unwrap().send((item, socket));
        },
        |item: &mut u32, mut socket: &TcpStream| {
            let mut byte = [0u8; 1];
            if !matches!(socket.peek(&mut byte), Ok(1)) || byte[0] != b'p' {
                return Readable::Wake;
            }
            socket.read_exact(&mut byte).unwrap();
            socket.write_all(b"P").unwrap();
            *item += 1;
            let deadline = (*item > 99).then(Instant::now);
            Readable::Handled(deadline)
        },
    )
    .unwrap();
    (h, rx)
}

#[test]
fn input_answered_in_place_keeps_the_item_parked_and_watched() {
    let (h, rx) = setup_answering();
    let (mut client, server) = pair();
    park(&h, 0, server, None);
    client.set_read_timeout(Some(WAIT)).expect("read timeout");
    for _ in 0..3 {
        client.write_all(b"p").unwrap();
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"P");
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "woke for input answered in place"
    );
    assert_eq!(h.len(), 1);
    // Anything else still wakes it, unread, with what it counted.
    client.write_all(b"x").unwrap();
    let (item, mut socket) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(item, 3);
    let mut buf = [0u8; 1];
    socket.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"x");
}

#[test]
fn a_deadline_set_in_place_is_kept() {
    let (h, rx) = setup_answering();
    let (mut client, server) = pair();
    park(&h, 99, server, None);
    client.write_all(b"p").unwrap();
    // The answer set a deadline that has passed: the poller wakes the item for it.
    let (item, _socket) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(item, 100);
    assert_eq!(h.len(), 0);
}

#[test]
fn a_parked_connection_costs_a_24_byte_slot() {
    let slot = std::mem::size_of::<super::Slot<Box<[u8; 512]>>>();
    assert!(slot <= 24, "a slot is {slot} bytes");
}

#[test]
fn a_slot_reused_is_not_woken_by_the_old_waker() {
    let (h, rx) = setup();
    let (_c1, s1) = pair();
    let old = park(&h, 1, s1, None);
    let old = old.lock().unwrap().take().unwrap();
    old.wake_by_ref();
    assert_eq!(rx.recv_timeout(WAIT).unwrap().0, 1);
    // The same slot, parked again: the first parking's waker no longer names it.
    let (_c2, s2) = pair();
    park(&h, 2, s2, None);
    old.wake();
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    assert_eq!(h.len(), 1);
}
