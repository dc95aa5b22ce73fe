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
            let msg = format!("{e:#}");
            cli::logging::log_fatal(log.as_deref(), format, &msg);
            eprintln!("sprout: {msg}");
            ExitCode::from(1)
        }
    }
}
