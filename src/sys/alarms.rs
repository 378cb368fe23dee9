//! Alarms (`$SYS/brokers/<node>/alarms/alert | clear`).

use std::sync::Arc;

use tokio::sync::watch;

use super::SysQueue;
use crate::broker::Broker;

pub fn start(
    _broker: &Arc<Broker>,
    _queue: SysQueue,
    _shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {})
}
