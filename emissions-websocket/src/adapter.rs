//! The adapter: this instance's committed events into the feed. Wiring only.

use std::sync::Arc;

use emissions_core::{Adapter, BatchError, BoxError, Event, TopicRouter, async_trait};

use crate::config::Carried;
use crate::hub::Hub;
use crate::request_builder;

/// Publishes committed events to a [`LiveFeed`](crate::LiveFeed): each carried event becomes
/// one frame, serialized once and queued for every connection that may see it. Its shutdown
/// drains the feed within the engine's deadline. Take it with
/// [`LiveFeed::adapter`](crate::LiveFeed::adapter).
///
/// ```
/// use emissions_core::{Emissions, Named};
/// use emissions_websocket::{LiveFeed, Public};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let feed = LiveFeed::builder().events(["order_*"]).build(Public)?;
/// let emissions = Emissions::builder()
///     .adapter(Named::new("live", feed.adapter()?))?
///     .start()
///     .await?;
/// assert!(feed.adapter().is_err(), "one adapter per feed");
/// emissions.shutdown(std::time::Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
pub struct FeedAdapter {
    hub: Arc<Hub>,
    carried: Carried,
    router: Option<Arc<dyn TopicRouter + Send + Sync>>,
    epoch: String,
    next: u64,
}

impl std::fmt::Debug for FeedAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedAdapter")
            .field("epoch", &self.epoch)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl FeedAdapter {
    pub(crate) fn new(
        hub: Arc<Hub>,
        carried: Carried,
        router: Option<Arc<dyn TopicRouter + Send + Sync>>,
    ) -> Self {
        let epoch = hub.epoch();
        FeedAdapter {
            hub,
            carried,
            router,
            epoch,
            next: 0,
        }
    }
}

/// Whether the feed carries an event of this name and topic.
pub(crate) fn carries(carried: &Carried, name: &str, topic: Option<&str>) -> bool {
    match carried {
        Carried::Unset => false,
        Carried::Some(selection) => selection.selects(name, topic),
        Carried::All => true,
    }
}

#[async_trait]
impl Adapter for FeedAdapter {
    async fn handle_events(&mut self, events: &[Event]) -> Result<(), BatchError> {
        let mut entries = Vec::with_capacity(events.len());
        for event in events {
            let topic = self
                .router
                .as_ref()
                .and_then(|r| r.topic_for_event(event.name()));
            if !carries(&self.carried, event.name(), topic) {
                continue;
            }
            let offset = self.next;
            entries.push(request_builder::entry(
                event.clone(),
                topic.map(Arc::from),
                0,
                offset,
                &self.epoch,
                &[offset + 1],
                self.hub.cloudevents.as_ref(),
            ));
            self.next += 1;
        }
        if !entries.is_empty() {
            self.hub.publish(entries, &[self.next]);
        }
        Ok(())
    }

    async fn shutdown(&mut self, deadline: tokio::time::Instant) -> Result<(), BoxError> {
        self.hub.shutdown(deadline).await;
        Ok(())
    }
}
