//! `wren`: the node agent and the admin CLI.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = wren_agent::cli::Cli::parse();
    match wren_agent::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes, joined.
            eprintln!("wren: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
