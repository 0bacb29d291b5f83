//! Stream positions: `EPOCH.O0.O1…` — the stream's epoch, then for each of its streams
//! (Kafka partitions in order; one for an in-process feed) the next offset not yet served.
//! ASCII only, so it fits an SSE `id:` line and a `Last-Event-ID` header. Pure.

/// Longest epoch, in bytes.
const MAX_EPOCH: usize = 64;
/// Most streams (partitions) in one position.
pub(crate) const MAX_STREAMS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) epoch: String,
    pub(crate) offsets: Vec<u64>,
}

impl Position {
    pub(crate) fn format(epoch: &str, offsets: &[u64]) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(epoch.len() + offsets.len() * 8);
        out.push_str(epoch);
        for offset in offsets {
            let _ = write!(out, ".{offset}");
        }
        out
    }

    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split('.');
        let epoch = parts.next().unwrap_or_default();
        if epoch.is_empty()
            || epoch.len() > MAX_EPOCH
            || !epoch
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a position starts with the stream's epoch".to_owned());
        }
        let mut offsets = Vec::new();
        for part in parts {
            if offsets.len() == MAX_STREAMS {
                return Err("a position with too many offsets".to_owned());
            }
            offsets.push(
                part.parse::<u64>()
                    .map_err(|_| "a position's offsets are numbers".to_owned())?,
            );
        }
        if offsets.is_empty() {
            return Err("a position without offsets".to_owned());
        }
        Ok(Position {
            epoch: epoch.to_owned(),
            offsets,
        })
    }
}

/// FNV-1a, for a stable epoch from a Kafka source's topics and partition counts (the same on
/// every instance and every build).
#[cfg(any(feature = "kafka", test))]
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let text = Position::format("k1f2", &[0, 17, 4_000_000_000]);
        assert_eq!(text, "k1f2.0.17.4000000000");
        assert_eq!(
            Position::parse(&text).unwrap(),
            Position {
                epoch: "k1f2".into(),
                offsets: vec![0, 17, 4_000_000_000]
            }
        );
        for bad in ["", ".1", "e", "e.x", "e.-1", "é.1", "e.1.", "e..1"] {
            assert!(Position::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(stable_hash("orders/3"), stable_hash("orders/3"));
        assert_ne!(stable_hash("orders/3"), stable_hash("orders/4"));
    }
}
