//! `wren`: the node agent and the admin CLI.

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> std::process::ExitCode {
    let cli = match wren_agent::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                let argv: Vec<String> = std::env::args_os()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                eprintln!("wren: {}", wren_agent::cli::usage_error_line(&e, &argv));
                return std::process::ExitCode::from(2);
            }
        },
    };
    match wren_agent::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wren: {}", wren_agent::cli::error_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
