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
                // clap's own rendering adds usage and a hint on further lines; keep the first.
                let rendered = e.render().to_string();
                let line = rendered.lines().next().unwrap_or("invalid command line");
                eprintln!("wren: {}", line.trim_start_matches("error: "));
                return std::process::ExitCode::from(2);
            }
        },
    };
    match wren_agent::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line: the error and its causes, joined.
            eprintln!("wren: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
