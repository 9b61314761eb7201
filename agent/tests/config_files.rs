//! The configuration files shipped in `deploy/` are accepted by the agent's parser, and every
//! setting the agent knows is documented in the example and in `docs/configuration.md`.

use std::path::Path;

use clap::CommandFactory;
use wren_agent::config::Settings;

fn repo_file(path: &str) -> (std::path::PathBuf, String) {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"));
    (full, text)
}

/// The example with every commented-out key switched on.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| !k.contains(' ')) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every file key of `wren agent`: its settings' clap ids in camelCase (serde names the
/// same fields with `rename_all = "camelCase"`), with their flags and variables.
fn settings() -> Vec<(String, String, Option<String>)> {
    let command = <Settings as clap::Args>::augment_args(clap::Command::new("agent"));
    command
        .get_arguments()
        .map(|arg| {
            let mut key = String::new();
            let mut upper = false;
            for c in arg.get_id().as_str().chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    key.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    key.push(c);
                }
            }
            let flag = format!("--{}", arg.get_long().expect("every setting has a flag"));
            let variable = arg.get_env().map(|v| v.to_string_lossy().into_owned());
            (key, flag, variable)
        })
        .collect()
}

#[test]
fn the_example_parses_with_every_key_set() {
    let (path, text) = repo_file("deploy/config/wren.toml");
    let all = uncommented(&text);
    Settings::from_toml(&path, &all).unwrap_or_else(|e| panic!("{e}"));
    let keys = settings();
    assert!(keys.len() >= 28, "{keys:?}");
    for (key, _, _) in keys {
        assert!(
            all.lines().any(|l| l.starts_with(&format!("{key} = "))),
            "{key} is not documented in deploy/config/wren.toml"
        );
    }
}

#[test]
fn the_configuration_reference_lists_every_flag_variable_and_key() {
    let (_, text) = repo_file("docs/configuration.md");
    let command = wren_agent::cli::Cli::command();
    let agent = command.find_subcommand("agent").unwrap();
    for arg in agent.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        assert!(
            text.contains(&format!("`--{long}`")),
            "--{long} is missing from docs/configuration.md"
        );
        if let Some(variable) = arg.get_env() {
            let variable = variable.to_string_lossy();
            assert!(
                text.contains(&format!("`{variable}`")),
                "{variable} is missing from docs/configuration.md"
            );
        }
    }
    for (key, flag, _) in settings() {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("{key} is missing from docs/configuration.md"));
        assert!(
            row.contains(&format!("`{flag}`")),
            "{key}'s row lacks {flag}"
        );
    }
}

#[test]
fn the_kubernetes_config_map_carries_a_valid_config() {
    let (path, text) = repo_file("deploy/kubernetes/wren.yaml");
    let start = text
        .find("wren.toml: |")
        .expect("no wren.toml in the ConfigMap");
    let body: String = text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| l.trim_start())
        .collect::<Vec<_>>()
        .join("\n");
    Settings::from_toml(&path, &body).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_misspelt_key_is_refused_naming_it() {
    let err = Settings::from_toml(Path::new("x.toml"), "nodeIP = \"10.0.0.2/24\"\n").unwrap_err();
    assert!(err.to_string().contains("nodeIP"), "{err}");
}
