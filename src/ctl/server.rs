//! The node's side of the control socket.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::{run_command, Reply};
use crate::broker::Broker;
use crate::listener::control::ListenerEntry;
use crate::plugins::Plugins;

/// What commands act on, besides the broker.
pub struct Node {
    pub broker: Arc<Broker>,
    /// The node's listeners, for `emqx_ctl listeners`.
    pub listeners: Arc<Vec<Arc<ListenerEntry>>>,
    pub plugins: Arc<Plugins>,
    /// Asks the node to shut down (`emqx stop`).
    pub stop: Arc<watch::Sender<bool>>,
}

/// Serve control requests until shutdown.
pub async fn serve(node: Arc<Node>, listener: UnixListener, mut shutdown: watch::Receiver<bool>) {
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
        let node = node.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take(quay_ctl::MAX_REQUEST_BYTES));
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match quay_ctl::decode_request(&line) {
                Ok(args) => dispatch(&node, &args).await,
                Err(e) => Reply {
                    code: 2,
                    output: format!("bad request: {e}\n"),
                },
            };
            let _ = write.write_all(&quay_ctl::encode_reply(&reply)).await;
        });
    }
}

/// Commands that wait (on a listener's accept loop, a plugin's start) are answered
/// here; the rest by [`run_command`].
async fn dispatch(node: &Node, args: &[String]) -> Reply {
    match args.first().map(String::as_str) {
        Some("stop") => {
            let _ = node.stop.send(true);
            Reply {
                code: 0,
                output: "ok\n".into(),
            }
        }
        Some("listeners") => super::listeners::run(&node.listeners, &args[1..]).await,
        Some("plugins") => super::plugins::run(&node.plugins, &args[1..]).await,
        Some("banned") => crate::banned::ctl::run(&node.broker, &args[1..]).await,
        _ => match node.plugins.ctl(args).await {
            Some(reply) => reply,
            None => run_command(&node.broker, args),
        },
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
