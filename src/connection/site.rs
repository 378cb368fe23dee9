//! What every connection of one listener shares, behind one pointer in each: the
//! broker, the zone, the listener's name and layers, the shutdown signal, the
//! hibernator and the listener's connection slots. A hibernated connection is its
//! box and little else, so each word here is a word less per idle client.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};

use super::{Hibernation, ListenerLayers};
use crate::broker::Broker;
use crate::config::Zone;

pub(crate) struct Site {
    pub broker: Arc<Broker>,
    pub zone: Arc<Zone>,
    /// The listener's name (`listener.tcp.<name>`), which hooks see.
    pub listener: Arc<str>,
    /// What only a socket's connections have; None for a channel opened without one
    /// (the simulation, channel tests).
    pub edge: Option<Edge>,
}

pub(crate) struct Edge {
    /// The listener's id as `emqx_ctl listeners` shows it (`mqtt:ws:external`), for
    /// log lines about its connections.
    pub id: Arc<str>,
    /// What an SSL, WS or WSS listener puts under the channel (None: plain TCP).
    pub layers: Option<ListenerLayers>,
    pub shutdown: watch::Receiver<bool>,
    pub hibernation: Hibernation,
    /// `max_connections`: a connection holds one permit (forgotten when it is
    /// accepted) and gives it back when it is dropped (`Connection`'s `Drop`).
    pub slots: Arc<Semaphore>,
    /// The node waits for every clone to go: the last connection of the listener
    /// (hibernated ones too) drops the last `Site`.
    pub _alive: mpsc::Sender<()>,
}

impl Site {
    /// A site with no socket edge: channels opened by tests and the simulation.
    pub fn detached(broker: Arc<Broker>, zone: Arc<Zone>, listener: Arc<str>) -> Arc<Site> {
        Arc::new(Site {
            broker,
            zone,
            listener,
            edge: None,
        })
    }

    pub fn layers(&self) -> Option<&ListenerLayers> {
        self.edge.as_ref().and_then(|e| e.layers.as_ref())
    }

    /// The listener's id for log lines (`mqtt:ws:external`); a site without a socket
    /// edge has only its name.
    pub fn listener_id(&self) -> &str {
        self.edge.as_ref().map_or(&self.listener, |e| &e.id)
    }
}
