//! The node's side of the control socket.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::{run_command, Reply};
use crate::broker::Broker;
use crate::listener::control::ListenerEntry;

/// Serve control requests until shutdown. `stop` asks the node to shut down.
/// `listeners` are the node's, for `emqx_ctl listeners`.
pub async fn serve(
    broker: Arc<Broker>,
    listeners: Arc<Vec<Arc<ListenerEntry>>>,
    listener: UnixListener,
    stop: Arc<watch::Sender<bool>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let stream = tokio::select! {
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "ctl accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let broker = broker.clone();
        let listeners = listeners.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(quay_ctl::MAX_REQUEST_BYTES));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match quay_ctl::decode_request(&line) {
                Ok(args) if args.first().map(String::as_str) == Some("stop") => {
                    let _ = stop.send(true);
                    Reply {
                        code: 0,
                        output: "ok\n".into(),
                    }
                }
                // Stop and restart wait for the listener's accept loop.
                Ok(args) if args.first().map(String::as_str) == Some("listeners") => {
                    super::listeners::run(&listeners, &args[1..]).await
                }
                Ok(args) => run_command(&broker, &args),
                Err(e) => Reply {
                    code: 2,
                    output: format!("bad request: {e}\n"),
                },
            };
            let _ = write.write_all(&quay_ctl::encode_reply(&reply)).await;
        });
    }
}

/// Bind the control socket, replacing a stale one left by a crash.
pub fn bind(path: &PathBuf) -> std::io::Result<UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another node is running with this data dir ({})",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path)
}
