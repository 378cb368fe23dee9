//! The control protocol between a Quay node and `emqx_ctl` / `emqx stop|ping`.
//!
//! A Unix socket at `<node.data_dir>/emqx_ctl.sock`: the client writes one JSON array
//! of arguments and a newline; the node answers one JSON object
//! `{"code": <exit code>, "output": "<text>"}` and a newline, and closes. Both sides
//! find the socket through the same config (and EMQX_* overrides), as `emqx_ctl` finds
//! a node in EMQX.
//!
//! This crate is what `emqx_ctl` links besides the config loader: it must never
//! depend on the broker (and so on RocksDB). The client side is blocking std I/O
//! with a deadline; the node's async side (`quay::ctl::server`) uses the encoders
//! and decoders here, so the wire format is defined once.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The version of this build, shown by `emqx_ctl status` and `emqx start`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The longest request the node reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;

/// The longest answer the client reads (a listing of many clients can be long).
const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

/// The node's answer: the exit code for `emqx_ctl` and what it prints on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub code: i32,
    pub output: String,
}

/// Where the node of `data_dir` listens.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("emqx_ctl.sock")
}

/// One request line: the arguments as a JSON array, then a newline.
pub fn encode_request(args: &[String]) -> Vec<u8> {
    line(args)
}

pub fn decode_request(line: &str) -> Result<Vec<String>, serde_json::Error> {
    serde_json::from_str(line)
}

/// One reply line: the reply as a JSON object, then a newline.
pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    line(reply)
}

pub fn decode_reply(line: &[u8]) -> Result<Reply, serde_json::Error> {
    serde_json::from_slice(line)
}

fn line(value: &(impl Serialize + ?Sized)) -> Vec<u8> {
    // Serializing a list of strings or a Reply cannot fail (no maps with non-string
    // keys, no custom Serialize); an empty line would be refused by the other side.
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Send `args` to the node listening at `socket` and wait at most `timeout` in all
/// for its answer.
pub fn call(socket: &Path, args: &[String], timeout: Duration) -> std::io::Result<Reply> {
    let deadline = Instant::now() + timeout;
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(&encode_request(args))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(timed_out()),
            Err(e) => return Err(e),
        };
        let newline = buf[..n].iter().position(|b| *b == b'\n');
        answer.extend_from_slice(&buf[..newline.unwrap_or(n)]);
        if newline.is_some() || n == 0 {
            break;
        }
        if answer.len() > MAX_REPLY_BYTES {
            return Err(invalid(format!(
                "the node's answer is longer than {MAX_REPLY_BYTES} bytes"
            )));
        }
    }
    decode_reply(&answer).map_err(|e| invalid(format!("the node's answer is not a reply: {e}")))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "node did not answer")
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    /// A node stand-in answering one request with `answer(request line)`.
    fn serve_once(
        dir: &Path,
        answer: impl FnOnce(String) -> Vec<u8> + Send + 'static,
    ) -> (PathBuf, std::thread::JoinHandle<()>) {
        let path = socket_path(dir);
        let listener = UnixListener::bind(&path).expect("bind test socket");
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request = String::new();
            reader.read_line(&mut request).expect("read request");
            let mut stream = stream;
            let _ = stream.write_all(&answer(request));
        });
        (path, server)
    }

    #[test]
    fn request_and_reply_round_trip() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, server) = serve_once(dir.path(), |request| {
            let args = decode_request(&request).expect("a request");
            encode_reply(&Reply {
                code: 3,
                output: format!("{}\n", args.join("|")),
            })
        });
        let args = vec!["clients".to_string(), "show".into(), "a \"b\"\n".into()];
        let reply = call(&path, &args, Duration::from_secs(5)).expect("answered");
        assert_eq!(
            reply,
            Reply {
                code: 3,
                output: "clients|show|a \"b\"\n\n".into()
            }
        );
        server.join().expect("server thread");
    }

    #[test]
    fn a_node_that_does_not_answer_times_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = socket_path(dir.path());
        let _listener = UnixListener::bind(&path).expect("bind test socket");
        let started = Instant::now();
        let err = call(&path, &["ping".into()], Duration::from_millis(200)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_garbled_answer_is_invalid_data() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, server) = serve_once(dir.path(), |_| b"not json\n".to_vec());
        let err = call(&path, &["ping".into()], Duration::from_secs(5)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        server.join().expect("server thread");
    }

    #[test]
    fn no_node_is_an_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(call(&socket_path(dir.path()), &[], Duration::from_secs(1)).is_err());
    }
}
