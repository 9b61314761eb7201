//! Names of a lab's namespaces, and the rules a lab name follows.

use super::{LabError, Result};

/// Port of each agent's health and metrics server, on the loopback of its own namespace.
pub const METRICS_PORT: u16 = 9099;

/// Longest lab name: it is part of every namespace name and of pod container ids.
pub const MAX_NAME: usize = 8;

/// Checks that `name` is 1–8 lowercase letters or digits.
pub fn validate(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(LabError::Lab(format!(
            "lab name `{name}` must be 1–{MAX_NAME} lowercase letters or digits"
        )))
    }
}

/// Prefix of every namespace of lab `lab`.
pub fn ns_prefix(lab: &str) -> String {
    format!("wl-{lab}-")
}

/// The namespace of `role` (`sw`, `rt`, `tor`, `n1`, `n1-p3`) in lab `lab`.
pub fn ns_name(lab: &str, role: &str) -> String {
    format!("{}{role}", ns_prefix(lab))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_are_short_and_plain() {
        assert!(validate("demo").is_ok());
        assert!(validate("t12345").is_ok());
        for bad in ["", "Demo", "a-b", "waytoolong", "a b"] {
            assert!(validate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_namespace_of_a_lab_shares_its_prefix() {
        assert!(ns_name("demo", "n1").starts_with(&ns_prefix("demo")));
        assert!(!ns_name("demo2", "n1").starts_with(&ns_prefix("demo")));
    }
}
