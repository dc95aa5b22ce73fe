//! `sprout`: a runc-compatible OCI runtime CLI over the sprout crates.

mod cli;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(args) => args,
        Err(e) => return usage_error(e),
    };
    let log = args.global.log.clone();
    let format = args.global.log_format;
    if let Err(e) = cli::logging::init(log.as_deref(), format, args.global.debug) {
        eprintln!("sprout: {e:#}");
        return ExitCode::from(1);
    }
    match cli::run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let msg = one_line(&e);
            cli::logging::log_fatal(log.as_deref(), format, &msg);
            eprintln!("sprout: {msg}");
            ExitCode::from(1)
        }
    }
}

/// A command line clap refused. runc exits 1 on usage errors (clap's
/// default is 2), and tools that drive runc read the reason from `--log`,
/// so it goes there too when the flag can still be found in argv.
fn usage_error(e: clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let rendered = e.render().to_string();
    let (log, format) = log_flags(std::env::args_os().skip(1));
    if let Some(first) = rendered.lines().find(|l| !l.trim().is_empty()) {
        let msg = first.trim_start_matches("error: ");
        cli::logging::log_fatal(log.as_deref(), format, msg);
    }
    eprint!("{rendered}");
    ExitCode::from(1)
}

/// `--log` and `--log-format` as written in argv (either `--flag value` or
/// `--flag=value`), for reporting a command line that did not parse.
fn log_flags(args: impl Iterator<Item = OsString>) -> (Option<PathBuf>, cli::logging::LogFormat) {
    let mut log = None;
    let mut format = cli::logging::LogFormat::Text;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        if flag != "--log" && flag != "--log-format" {
            continue;
        }
        let Some(value) = inline.or_else(|| args.next().map(|v| v.to_string_lossy().into_owned()))
        else {
            break;
        };
        if flag == "--log" {
            log = Some(PathBuf::from(value));
        } else if value == "json" {
            format = cli::logging::LogFormat::Json;
        }
    }
    (log, format)
}

/// The error and its causes on one line (see `runtime::error::one_line`).
fn one_line(e: &anyhow::Error) -> String {
    sprout::runtime::error::one_line(e.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> impl Iterator<Item = OsString> {
        args.iter()
            .map(OsString::from)
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn log_flags_are_found_in_both_spellings() {
        let (log, format) = log_flags(os(&["--log", "/l", "--log-format=json", "state"]));
        assert_eq!(log.as_deref(), Some(std::path::Path::new("/l")));
        assert!(matches!(format, cli::logging::LogFormat::Json));
        let (log, format) = log_flags(os(&["state", "--log=/x", "--log-format", "text"]));
        assert_eq!(log.as_deref(), Some(std::path::Path::new("/x")));
        assert!(matches!(format, cli::logging::LogFormat::Text));
        assert!(log_flags(os(&["state", "--log"])).0.is_none());
    }
}
