//! `sprout`: a runc-compatible OCI runtime CLI over the sprout crates.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
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

/// The error and its causes on one line. sprout's error types already put
/// their source into their own message, so a cause is added only when the
/// line does not say it yet (anyhow's `{:#}` would repeat it).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}
