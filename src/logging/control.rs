//! `emqx_ctl log ...` (EMQX 4's wording): the primary level is the filter every log
//! line passes; handlers are where lines go (the console, the file). Quay's handlers
//! share the primary level, so `set-level` and `primary-level <level>` do the same.

use super::{filter_for, LogState, STATE};
use crate::config::{LogLevel, LogTo};
use crate::ctl::Reply;

fn parse(name: &str) -> Option<LogLevel> {
    LogLevel::ALL.into_iter().find(|l| l.as_str() == name)
}

fn reply(code: i32, output: String) -> Reply {
    Reply { code, output }
}

fn set(state: &LogState, name: &str) -> Reply {
    let Some(level) = parse(name) else {
        let names: Vec<&str> = LogLevel::ALL.iter().map(|l| l.as_str()).collect();
        return reply(
            1,
            format!("Invalid log level: {name} (one of {})\n", names.join(", ")),
        );
    };
    if let Err(e) = state.filter.reload(filter_for(level)) {
        return reply(1, format!("[error] cannot change the log level: {e}\n"));
    }
    *state.level.lock().unwrap_or_else(|e| e.into_inner()) = level;
    tracing::info!(level = level.as_str(), "log level changed");
    reply(0, format!("{}\n", level.as_str()))
}

fn handlers(state: &LogState, level: LogLevel) -> String {
    let file = format!(
        "LogHandler(id=file, level={}, destination={})\n",
        level.as_str(),
        state.file.display()
    );
    let console = format!(
        "LogHandler(id=console, level={}, destination=console)\n",
        level.as_str()
    );
    match state.to {
        LogTo::Console => console,
        LogTo::File => file,
        LogTo::Both => console + &file,
    }
}

/// `args` after `log`.
pub fn run_command(args: &[&str]) -> Reply {
    let Some(state) = STATE.get() else {
        return reply(1, "[error] logging is not set up in this process\n".into());
    };
    let level = *state.level.lock().unwrap_or_else(|e| e.into_inner());
    match args {
        ["set-level", name] | ["primary-level", name] => set(state, name),
        ["primary-level"] => reply(0, format!("{}\n", level.as_str())),
        ["handlers", "list"] => reply(0, handlers(state, level)),
        _ => reply(
            1,
            "Usage:\n\
             log set-level <Level>                   # Set the overall log level\n\
             log primary-level                       # Show the primary log level now\n\
             log primary-level <Level>               # Set the primary log level\n\
             log handlers list                       # Show log handlers\n"
                .into(),
        ),
    }
}
