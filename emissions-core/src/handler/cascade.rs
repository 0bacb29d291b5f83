//! [`Cascade`]: where a handler's follow-up events sit in a chain of handlers — the causation
//! and correlation ids they carry, and the depth limit that ends emit loops.

use std::sync::Arc;

use super::{CASCADE_DEPTH, CAUSATION_ID, CORRELATION_ID};
use crate::{Error, Event, Metadata};

/// The cascade position of the follow-up events of one handler run.
#[derive(Clone, Debug)]
pub(crate) struct Cascade {
    causation_id: String,
    correlation_id: serde_json::Value,
    depth: u32,
    limit: u32,
    handler: Arc<str>,
}

impl Cascade {
    /// The cascade of follow-ups that `handler` emits while handling `event`.
    pub(crate) fn of(event: &Event, handler: Arc<str>, limit: u32) -> Self {
        let metadata = event.metadata();
        let depth = metadata
            .get(CASCADE_DEPTH)
            .and_then(serde_json::Value::as_u64)
            .and_then(|d| u32::try_from(d).ok())
            .unwrap_or(0);
        Cascade {
            causation_id: event.id().to_string(),
            correlation_id: metadata
                .get(CORRELATION_ID)
                .cloned()
                .unwrap_or_else(|| event.id().to_string().into()),
            depth: depth.saturating_add(1),
            limit,
            handler,
        }
    }

    pub(crate) fn handler(&self) -> &str {
        &self.handler
    }

    /// Adds the cascade keys to a follow-up's metadata, or refuses a follow-up deeper than
    /// the limit with [`Error::CascadeDepth`].
    pub(crate) fn stamp(&self, metadata: &mut Metadata) -> Result<(), Error> {
        if self.depth > self.limit {
            return Err(Error::CascadeDepth {
                depth: self.depth,
                limit: self.limit,
            });
        }
        metadata.insert(
            CAUSATION_ID.to_owned(),
            serde_json::Value::String(self.causation_id.clone()),
        );
        metadata.insert(CORRELATION_ID.to_owned(), self.correlation_id.clone());
        metadata.insert(CASCADE_DEPTH.to_owned(), self.depth.into());
        Ok(())
    }
}
