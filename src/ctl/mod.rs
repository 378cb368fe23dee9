//! The control channel behind `emqx_ctl` and `emqx stop|ping`.
//!
//! A Unix socket at `<node.data_dir>/emqx_ctl.sock`: the client writes one JSON array
//! of arguments and a newline; the node answers one JSON object
//! `{"code": <exit code>, "output": "<text>"}` and closes. Both sides find the socket
//! through the same config (and EMQX_* overrides), as `emqx_ctl` finds a node in EMQX.

mod commands;
pub mod server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub use commands::{run_command, VERSION};

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub code: i32,
    pub output: String,
}

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("emqx_ctl.sock")
}

/// Send `args` to the node listening at `socket`.
pub async fn call(socket: &Path, args: &[String], timeout: Duration) -> std::io::Result<Reply> {
    let exchange = async {
        let stream = UnixStream::connect(socket).await?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(args)?;
        line.push(b'\n');
        write.write_all(&line).await?;
        let mut answer = String::new();
        BufReader::new(read).read_line(&mut answer).await?;
        serde_json::from_str::<Reply>(&answer)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "node did not answer"))?
}
