//! Which events a client wants: exact names, `prefix*` patterns, and topics. Pure.

use std::sync::Arc;

use emissions_core::TopicRouter;
use serde::Deserialize;

/// A client's subscription. Empty means everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subscription {
    /// Event names; a trailing `*` matches any name with that prefix.
    #[serde(default)]
    pub(crate) events: Vec<String>,
    /// Topics, resolved through the server's router.
    #[serde(default)]
    pub(crate) topics: Vec<String>,
}

/// Most patterns a subscription may hold.
pub(crate) const MAX_PATTERNS: usize = 64;

impl Subscription {
    /// From the URL query: `events=a,order_*&topics=orders`.
    pub(crate) fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut subscription = Subscription::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let list = value
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned);
            match key.as_ref() {
                "events" => subscription.events.extend(list),
                "topics" => subscription.topics.extend(list),
                _ => {}
            }
        }
        subscription.check()?;
        Ok(subscription)
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.events.len() + self.topics.len() > MAX_PATTERNS {
            return Err(format!("at most {MAX_PATTERNS} names and topics"));
        }
        if let Some(bad) = self
            .events
            .iter()
            .find(|p| p.is_empty() || p[..p.len() - 1].contains('*'))
        {
            return Err(format!("`{bad}`: only a trailing * is supported"));
        }
        Ok(())
    }

    pub(crate) fn matches(
        &self,
        name: &str,
        router: Option<&Arc<dyn TopicRouter + Send + Sync>>,
    ) -> bool {
        if self.events.is_empty() && self.topics.is_empty() {
            return true;
        }
        let by_name = self
            .events
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            });
        by_name
            || router
                .and_then(|r| r.topic_for_event(name))
                .is_some_and(|topic| self.topics.iter().any(|t| t == topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    emissions_core::topic_router! { struct Topics { "orders" => ["order_created"], "users" => ["user_created"] } }

    #[test]
    fn names_prefixes_and_topics() {
        let router: Arc<dyn TopicRouter + Send + Sync> = Arc::new(Topics);
        let s = Subscription::from_query(Some("events=order_*,ping&topics=users")).unwrap();
        assert!(s.matches("order_created", Some(&router)));
        assert!(s.matches("order_shipped", None));
        assert!(s.matches("ping", None));
        assert!(!s.matches("pingpong", None));
        assert!(s.matches("user_created", Some(&router)));
        assert!(!s.matches("user_created", None));
        assert!(!s.matches("invoice_sent", Some(&router)));
        assert!(
            Subscription::from_query(None)
                .unwrap()
                .matches("anything", None)
        );
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Subscription::from_query(Some("events=a*b")).is_err());
        let many = (0..65)
            .map(|i| format!("e{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(Subscription::from_query(Some(&format!("events={many}"))).is_err());
    }
}
