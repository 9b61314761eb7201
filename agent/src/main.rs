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
                // clap renders the error, its details (the missing arguments) and then, after
                // a blank line, usage and hints: keep the error with its details, on one line.
                let rendered = e.render().to_string();
                let line = rendered
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ");
                let line = if line.is_empty() {
                    "invalid command line".to_owned()
                } else {
                    line
                };
                eprintln!("wren: {}", line.trim_start_matches("error: "));
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
