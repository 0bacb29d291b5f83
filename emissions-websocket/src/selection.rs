//! Which events: exact names, `prefix*` patterns and topics. Used twice — the feed's own
//! selection (what may leave the process at all) and a connection's subscription (which only
//! narrows). Pure; any UTF-8 is handled without slicing.

use serde::Deserialize;

/// Names and topics; a trailing `*` on a name matches any name with that prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Selection {
    #[serde(default)]
    pub(crate) events: Vec<String>,
    #[serde(default)]
    pub(crate) topics: Vec<String>,
}

/// Most names and topics a subscription may hold.
pub(crate) const MAX_PATTERNS: usize = 64;
/// Longest name or topic pattern, in bytes.
pub(crate) const MAX_PATTERN_BYTES: usize = 256;

impl Selection {
    /// From the URL query: `events=a,order_*&topics=orders` (other parameters ignored here).
    pub(crate) fn from_query(query: &str) -> Result<Self, String> {
        let mut selection = Selection::default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let list = value
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            match key.as_ref() {
                "events" => selection.events.extend(list),
                "topics" => selection.topics.extend(list),
                _ => {}
            }
            if selection.events.len() + selection.topics.len() > MAX_PATTERNS {
                break;
            }
        }
        selection.check()?;
        Ok(selection)
    }

    /// Refuses too many patterns, over-long ones, empty ones and a `*` anywhere but at the end.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.events.len() + self.topics.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} names and topics"));
        }
        for pattern in self.events.iter().chain(&self.topics) {
            if pattern.is_empty() {
                return Err("an empty name or topic".to_owned());
            }
            if pattern.len() > MAX_PATTERN_BYTES {
                return Err(format!(
                    "a name or topic longer than {MAX_PATTERN_BYTES} bytes"
                ));
            }
        }
        if let Some(bad) = self.events.iter().find(|p| {
            let head = p.strip_suffix('*').unwrap_or(p);
            head.contains('*')
        }) {
            return Err(format!("{bad:?}: only a trailing * is supported"));
        }
        if let Some(bad) = self.topics.iter().find(|t| t.contains('*')) {
            return Err(format!("{bad:?}: topics are exact names"));
        }
        Ok(())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.events.is_empty() && self.topics.is_empty()
    }

    /// Whether an event of this name (and topic, if routed) is selected; an empty selection
    /// selects nothing.
    pub(crate) fn selects(&self, name: &str, topic: Option<&str>) -> bool {
        self.events
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            })
            || topic.is_some_and(|topic| self.topics.iter().any(|t| t == topic))
    }

    /// A subscription: empty means everything the connection may see.
    pub(crate) fn narrows_to(&self, name: &str, topic: Option<&str>) -> bool {
        self.is_empty() || self.selects(name, topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_and_topics() {
        let s = Selection::from_query("events=order_*,ping&topics=users").unwrap();
        assert!(s.selects("order_created", None));
        assert!(s.selects("ping", None));
        assert!(!s.selects("pingpong", None));
        assert!(s.selects("user_created", Some("users")));
        assert!(!s.selects("user_created", None));
        assert!(!Selection::default().selects("anything", None));
        assert!(Selection::default().narrows_to("anything", None));
    }

    #[test]
    fn non_ascii_is_matched_not_sliced() {
        let s = Selection::from_query("events=caf%C3%A9,%E2%82%AC*").unwrap();
        assert!(s.selects("café", None));
        assert!(s.selects("€_paid", None));
        assert!(!s.selects("cafe", None));
        let star = Selection::from_query("events=%E2%82%AC*%E2%82%AC").unwrap_err();
        assert!(star.contains("only a trailing *"), "{star}");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Selection::from_query("events=a*b").is_err());
        assert!(Selection::from_query("topics=a*").is_err());
        assert!(Selection::from_query(&format!("events={}", "x".repeat(300))).is_err());
        let many = (0..65)
            .map(|i| format!("e{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(Selection::from_query(&format!("events={many}")).is_err());
    }
}
