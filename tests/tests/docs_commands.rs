//! The guides do what they say: every command in the `sh` blocks of `docs/getting-started.md`
//! and `docs/troubleshooting.md` runs as written on a real lab and prints what its `# expect:`
//! comment promises. (Blocks fenced as `console` show output or commands for real clusters and
//! are not run.)

use std::path::{Path, PathBuf};
use std::process::Command;

use wren_tests::lab;

/// One command of the guide and the text its output must contain.
#[derive(Debug)]
struct Step {
    command: String,
    expect: Option<String>,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The commands of every ```sh block, in order.
fn steps(markdown: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.is_empty() {
            continue;
        }
        let (command, expect) = match trimmed.split_once("# expect:") {
            Some((c, e)) => (c.trim(), Some(e.trim().to_owned())),
            None => (trimmed, None),
        };
        steps.push(Step {
            command: command.to_owned(),
            expect,
        });
    }
    steps
}

#[test]
fn the_guides_parse_into_commands_with_expectations() {
    for doc in ["docs/getting-started.md", "docs/troubleshooting.md"] {
        let guide = std::fs::read_to_string(repo().join(doc)).unwrap();
        let steps = steps(&guide);
        assert!(
            steps.iter().any(|s| s.command.starts_with("wren-lab up")),
            "{doc}"
        );
        assert_eq!(
            steps.last().map(|s| s.command.as_str()),
            Some("wren-lab down"),
            "{doc}"
        );
        assert!(
            steps.iter().filter(|s| s.expect.is_some()).count() >= 5,
            "{doc}"
        );
    }
}

/// Runs every command of `doc` in order, on a lab of its own (the guide's `wren-lab up`).
fn run_guide(doc: &str, tag: char) {
    if !lab::require_lab(false) {
        return;
    }
    let guide = std::fs::read_to_string(repo().join(doc)).unwrap();
    let bin = lab::default_bin_dir();
    let name = lab::test_lab_name(tag);
    // Removes the lab even when a step fails.
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = lab::down_by_name(&self.0);
        }
    }
    let _down = Down(name.clone());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for step in steps(&guide) {
        // The build steps are what the test harness already did (with the debug profile).
        if step.command.starts_with("cargo build") || step.command.starts_with("export PATH") {
            continue;
        }
        let out = Command::new("bash")
            .args(["-c", &step.command])
            .env("PATH", &path)
            .env("WREN_LAB", &name)
            .current_dir(repo())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{doc}: `{}` failed:\n{stdout}{}",
            step.command,
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(expect) = &step.expect {
            assert!(
                stdout.contains(expect.as_str()),
                "{doc}: `{}` did not print {expect:?}:\n{stdout}",
                step.command
            );
        }
    }
}

#[test]
fn every_getting_started_command_works_as_written() {
    run_guide("docs/getting-started.md", 'g');
}

#[test]
fn every_troubleshooting_command_works_as_written() {
    run_guide("docs/troubleshooting.md", 'r');
}
