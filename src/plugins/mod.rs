//! Plugins: features an operator starts and stops at run time (EMQX 4's
//! `emqx_plugins`): the authentication backends, bridges. Each is a [`Spec`] in
//! [`registry::all`]; starting one reads its settings (`etc/plugins/<name>.conf`,
//! kept raw in `Config::plugins.keys`), registers its hooks under its own name and
//! returns a [`Running`] handle; stopping it removes every hook of that name and
//! drops the handle (pools, tasks).
//!
//! Order matters: hooks of equal priority run in registration order, so the
//! authentication plugin loaded first checks first, as the guide says. Which plugins
//! run is recorded in `data/loaded_plugins` ([`loaded_file`]) before `emqx_ctl`
//! reports success, and the node starts them, in that order, before any listener
//! accepts a client: no client connects while the auth chain is still incomplete.

pub mod loaded_file;
pub mod registry;

use std::sync::Arc;

use quay_config::{Config, ConfigError, PluginKeys};
use tokio::sync::Mutex;

use crate::broker::Broker;
use crate::hooks::BoxFuture;
use loaded_file::{LoadedFileError, LoadedList};

/// What a started plugin keeps; dropped (after `stop`) when it is unloaded.
pub trait Running: Send + Sync {
    /// Release what the plugin holds (abort tasks, close pools). Its hooks are
    /// already removed when this runs.
    fn stop(self: Box<Self>) {}

    /// An `emqx_ctl` command this plugin serves while it runs (EMQX 4's
    /// `emqx_ctl:register_command`: `users`, `clientid`): the answer to `args` when
    /// its first word is the plugin's command, else `None`.
    fn ctl(&self, _args: &[String]) -> Option<BoxFuture<crate::ctl::Reply>> {
        None
    }
}

impl Running for () {}

/// What a plugin's start gets.
#[derive(Clone)]
pub struct Context {
    pub broker: Arc<Broker>,
    /// Every plugin setting; a plugin reads its own prefix (`auth.redis`).
    pub keys: Arc<PluginKeys>,
}

pub type StartFn = fn(Context) -> BoxFuture<Result<Box<dyn Running>, PluginError>>;

/// One plugin the broker knows.
pub struct Spec {
    pub name: &'static str,
    pub description: &'static str,
    pub start: StartFn,
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("not_found")]
    NotFound,
    #[error("already_started")]
    AlreadyStarted,
    #[error("not_started")]
    NotStarted,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Start(String),
    #[error(transparent)]
    LoadedFile(#[from] LoadedFileError),
}

/// One row of `emqx_ctl plugins list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginStatus {
    pub name: &'static str,
    pub description: &'static str,
    pub active: bool,
}

/// The node's plugins: which are known, which run, and the file recording it.
pub struct Plugins {
    broker: Arc<Broker>,
    specs: Vec<Spec>,
    /// Held across a whole load/unload (start, hook registration, file write), so two
    /// `emqx_ctl` calls cannot interleave and leave the file and the chain disagreeing.
    state: Mutex<State>,
}

struct State {
    /// In start order.
    running: Vec<(&'static str, Box<dyn Running>)>,
    list: LoadedList,
}

impl Plugins {
    pub fn new(broker: Arc<Broker>, specs: Vec<Spec>) -> Plugins {
        Plugins {
            broker,
            specs,
            state: Mutex::new(State {
                running: Vec::new(),
                list: LoadedList::default(),
            }),
        }
    }

    /// Start every plugin the loaded file enables, in its order. A plugin that
    /// cannot start (a bad setting) stops the node's start: running without an
    /// authentication backend the operator asked for would let the wrong clients in.
    /// A name the broker does not know is logged and skipped, as EMQX does.
    pub async fn start_at_boot(&self) -> Result<(), PluginError> {
        let config = &self.broker.config;
        let list = LoadedList::read(
            &config.loaded_plugins_file(),
            &config.shipped_loaded_plugins_file(),
        )?;
        let mut state = self.state.lock().await;
        let keys = Arc::new(config.plugins.keys.clone());
        for name in list.enabled() {
            let Some(spec) = self.spec(name) else {
                tracing::warn!(plugin = name, file = %config.loaded_plugins_file().display(), "unknown plugin in the loaded plugins file, skipped");
                continue;
            };
            let running = self.start(spec, keys.clone()).await?;
            state.running.push((spec.name, running));
        }
        state.list = list;
        Ok(())
    }

    pub async fn list(&self) -> Vec<PluginStatus> {
        let state = self.state.lock().await;
        self.specs
            .iter()
            .map(|s| PluginStatus {
                name: s.name,
                description: s.description,
                active: state.running.iter().any(|(n, _)| *n == s.name),
            })
            .collect()
    }

    /// `emqx_ctl plugins load`: start it with the settings as they are on disk now,
    /// and record that it runs.
    pub async fn load(&self, name: &str) -> Result<(), PluginError> {
        let spec = self.spec(name).ok_or(PluginError::NotFound)?;
        let mut state = self.state.lock().await;
        if state.running.iter().any(|(n, _)| *n == spec.name) {
            return Err(PluginError::AlreadyStarted);
        }
        let keys = Arc::new(self.reread_keys()?);
        let running = self.start(spec, keys).await?;
        let mut list = state.list.clone();
        list.set(spec.name, true);
        if let Err(e) = list.write(&self.broker.config.loaded_plugins_file()) {
            // Not recorded: do not leave it running either, or a restart would differ.
            self.stop(spec.name, running);
            return Err(e.into());
        }
        state.list = list;
        state.running.push((spec.name, running));
        Ok(())
    }

    /// `emqx_ctl plugins unload`.
    pub async fn unload(&self, name: &str) -> Result<(), PluginError> {
        let spec = self.spec(name).ok_or(PluginError::NotFound)?;
        let mut state = self.state.lock().await;
        let at = state
            .running
            .iter()
            .position(|(n, _)| *n == spec.name)
            .ok_or(PluginError::NotStarted)?;
        let mut list = state.list.clone();
        list.set(spec.name, false);
        list.write(&self.broker.config.loaded_plugins_file())?;
        state.list = list;
        let (name, running) = state.running.remove(at);
        self.stop(name, running);
        Ok(())
    }

    /// `emqx_ctl plugins reload`: stop it and start it again with its settings
    /// re-read from the config files. If the new settings are bad, it keeps running
    /// with the old ones and the error is returned.
    pub async fn reload(&self, name: &str) -> Result<(), PluginError> {
        let spec = self.spec(name).ok_or(PluginError::NotFound)?;
        let mut state = self.state.lock().await;
        let at = state
            .running
            .iter()
            .position(|(n, _)| *n == spec.name)
            .ok_or(PluginError::NotStarted)?;
        let keys = Arc::new(self.reread_keys()?);
        let (name, old) = state.running.remove(at);
        self.stop(name, old);
        match self.start(spec, keys).await {
            Ok(running) => {
                state.running.push((spec.name, running));
                Ok(())
            }
            Err(e) => {
                // The settings were checked by re-reading them; a start that still
                // fails (e.g. a file it names vanished) leaves it stopped, logged.
                tracing::error!(plugin = spec.name, error = %e, "plugin failed to restart on reload; it is stopped");
                Err(e)
            }
        }
    }

    /// Run `args` if a running plugin serves its first word. The command runs after
    /// the manager's lock is released: a slow command never holds up load/unload.
    pub async fn ctl(&self, args: &[String]) -> Option<crate::ctl::Reply> {
        let command = {
            let state = self.state.lock().await;
            state.running.iter().find_map(|(_, r)| r.ctl(args))
        }?;
        Some(command.await)
    }

    /// Stop every plugin (node shutdown), last started first.
    pub async fn stop_all(&self) {
        let mut state = self.state.lock().await;
        while let Some((name, running)) = state.running.pop() {
            self.stop(name, running);
        }
    }

    fn spec(&self, name: &str) -> Option<&Spec> {
        self.specs.iter().find(|s| s.name == name)
    }

    async fn start(
        &self,
        spec: &Spec,
        keys: Arc<PluginKeys>,
    ) -> Result<Box<dyn Running>, PluginError> {
        let ctx = Context {
            broker: self.broker.clone(),
            keys,
        };
        match (spec.start)(ctx).await {
            Ok(running) => {
                tracing::info!(plugin = spec.name, "plugin started");
                Ok(running)
            }
            Err(e) => {
                // Whatever it registered before failing goes too.
                self.broker.hooks.remove_all(spec.name);
                tracing::error!(plugin = spec.name, error = %e, "plugin failed to start");
                Err(e)
            }
        }
    }

    fn stop(&self, name: &'static str, running: Box<dyn Running>) {
        let removed = self.broker.hooks.remove_all(name);
        running.stop();
        tracing::info!(plugin = name, hooks = removed, "plugin stopped");
    }

    /// The plugin settings as the config files and environment hold them now.
    fn reread_keys(&self) -> Result<PluginKeys, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Ok(Config::load(&self.broker.config.config_file, &env)?
            .plugins
            .keys)
    }
}

#[cfg(test)]
mod tests;
