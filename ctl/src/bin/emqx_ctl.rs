//! `emqx_ctl`: administer a running node. Finds it through the same config and EMQX_*
//! overrides as `emqx`. A thin client: it links the config loader and the control
//! protocol, never the broker.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use quay_config::Config;
use quay_ctl as ctl;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut config_path: Option<PathBuf> = None;
    if args.first().map(String::as_str) == Some("--config") {
        if args.len() < 2 {
            eprintln!("emqx_ctl: --config needs a path");
            return ExitCode::from(2);
        }
        config_path = Some(PathBuf::from(args.remove(1)));
        args.remove(0);
    }
    let env: Vec<(String, String)> = std::env::vars().collect();
    let path = config_path.unwrap_or_else(Config::default_file);
    let config = match Config::load(&path, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("emqx_ctl: {e}");
            return ExitCode::from(1);
        }
    };
    let socket = ctl::socket_path(&config.node.data_dir);
    let reply = ctl::call(&socket, &args, Duration::from_secs(30));
    match reply {
        Ok(r) => {
            print!("{}", r.output);
            ExitCode::from(r.code.clamp(0, 255) as u8)
        }
        Err(_) => {
            eprintln!("Node '{}' not responding to pings.", config.node.name);
            ExitCode::from(1)
        }
    }
}
