//! Label selectors as Kubernetes evaluates them.

use crate::model::{LabelSelector, LabelSelectorRequirement, Labels, SelectorOperator};

impl LabelSelector {
    /// Whether `labels` satisfy every `matchLabels` pair and every expression. An empty
    /// selector matches every set of labels.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector has no requirement at all (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

impl LabelSelectorRequirement {
    /// Whether `labels` satisfy the requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

impl std::fmt::Display for LabelSelector {
    /// The selector as `kubectl` writes one: `app=web,tier in (a,b),!legacy`; an empty
    /// selector is `(all)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("(all)");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                SelectorOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
                SelectorOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                SelectorOperator::Exists => r.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn requirement(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![LabelSelectorRequirement {
                key: key.to_owned(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        }
    }

    #[test]
    fn the_empty_selector_matches_everything() {
        let all = LabelSelector::default();
        assert!(all.is_empty());
        assert!(all.matches(&labels(&[])));
        assert!(all.matches(&labels(&[("pod", "a")])));
    }

    #[test]
    fn match_labels_need_every_pair() {
        let s = LabelSelector {
            match_labels: labels(&[("pod", "a"), ("tier", "web")]),
            match_expressions: Vec::new(),
        };
        assert!(s.matches(&labels(&[("pod", "a"), ("tier", "web"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("pod", "a")])));
        assert!(!s.matches(&labels(&[("pod", "a"), ("tier", "db")])));
    }

    #[test]
    fn each_operator_as_kubernetes_defines_it() {
        let a = labels(&[("pod", "a")]);
        let b = labels(&[("pod", "b")]);
        let none = labels(&[("other", "a")]);
        let r#in = requirement("pod", SelectorOperator::In, &["a", "c"]);
        assert!(r#in.matches(&a) && !r#in.matches(&b) && !r#in.matches(&none));
        let not_in = requirement("pod", SelectorOperator::NotIn, &["a", "c"]);
        assert!(!not_in.matches(&a) && not_in.matches(&b) && not_in.matches(&none));
        let exists = requirement("pod", SelectorOperator::Exists, &[]);
        assert!(exists.matches(&a) && exists.matches(&b) && !exists.matches(&none));
        let absent = requirement("pod", SelectorOperator::DoesNotExist, &[]);
        assert!(!absent.matches(&a) && absent.matches(&none));
    }

    #[test]
    fn labels_and_expressions_together_are_anded() {
        let mut s = requirement("pod", SelectorOperator::NotIn, &["b"]);
        s.match_labels = labels(&[("ns", "x")]);
        assert!(s.matches(&labels(&[("ns", "x"), ("pod", "a")])));
        assert!(!s.matches(&labels(&[("ns", "x"), ("pod", "b")])));
        assert!(!s.matches(&labels(&[("ns", "y"), ("pod", "a")])));
    }
}
