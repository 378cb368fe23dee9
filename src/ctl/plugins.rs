//! `emqx_ctl plugins list | load | unload | reload <Plugin>`, worded as EMQX 4
//! (`emqx_mgmt_cli`). "successfully" is printed only once the choice is in
//! `data/loaded_plugins` (see `crate::plugins::loaded_file`).

use std::fmt::Write;

use super::Reply;
use crate::plugins::Plugins;

const USAGE: &str = "\
plugins list                            # Show loaded plugins
plugins load <Plugin>                   # Load plugin
plugins unload <Plugin>                 # Unload plugin
plugins reload <Plugin>                 # Reload plugin
";

pub async fn run(plugins: &Plugins, args: &[String]) -> Reply {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["list"] => {
            let mut out = String::new();
            for p in plugins.list().await {
                let _ = writeln!(
                    out,
                    "Plugin({}, version={}, description={}, active={})",
                    p.name,
                    super::VERSION,
                    p.description,
                    p.active
                );
            }
            Reply {
                code: 0,
                output: out,
            }
        }
        ["load", name] => done(plugins.load(name).await, "Load", "loaded", name),
        ["unload", name] => done(plugins.unload(name).await, "Unload", "unloaded", name),
        ["reload", name] => done(plugins.reload(name).await, "Reload", "reloaded", name),
        _ => Reply {
            code: 1,
            output: format!("Usage:\n{USAGE}"),
        },
    }
}

fn done(
    result: Result<(), crate::plugins::PluginError>,
    verb: &str,
    past: &str,
    name: &str,
) -> Reply {
    match result {
        Ok(()) => Reply {
            code: 0,
            output: format!("Plugin {name} {past} successfully.\n"),
        },
        Err(e) => Reply {
            code: 1,
            output: format!("{verb} plugin {name} error: {e}\n"),
        },
    }
}
