//! The I/O: one POST per attempt, and the classification of its result.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use emissions_core::{Event, Failure};
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::Error;

/// What one attempt came to.
#[derive(Debug)]
pub(crate) enum Outcome {
    Delivered,
    /// Worth retrying (408, 429, 5xx, connect errors, timeouts).
    Retry(Failure),
    /// Not worth retrying (3xx, other 4xx, a blocked address, a host name that does not
    /// resolve, an oversized payload).
    Permanent(Failure),
    /// 410 Gone: disable the endpoint.
    Gone(Failure),
}

pub(crate) struct Attempt<'a> {
    pub(crate) endpoint: &'a str,
    pub(crate) client: &'a reqwest::Client,
    pub(crate) url: &'a reqwest::Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) timeout: Duration,
    pub(crate) max_response_body: usize,
    pub(crate) retry_after_cap: Duration,
}

impl Attempt<'_> {
    pub(crate) async fn send(self, event: &Event) -> Outcome {
        let started = Instant::now();
        let sent = self
            .client
            .post(self.url.clone())
            .headers(self.headers)
            .body(self.body)
            .timeout(self.timeout)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => {
                tracing::debug!(
                    target: "emissions::webhook",
                    endpoint = self.endpoint,
                    event_id = %event.id(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    error = %err,
                    "webhook attempt failed"
                );
                return match blocked(&err) {
                    Some(blocked) => Outcome::Permanent(Failure::permanent(blocked)),
                    None => Outcome::Retry(Failure::retryable(Error::Transport(err))),
                };
            }
        };
        let status = response.status();
        let retry_after =
            retry_after(response.headers(), SystemTime::now()).map(|d| d.min(self.retry_after_cap));
        let body = read_limited(response, self.max_response_body).await;
        tracing::debug!(
            target: "emissions::webhook",
            endpoint = self.endpoint,
            event_id = %event.id(),
            status = status.as_u16(),
            duration_ms = started.elapsed().as_millis() as u64,
            "webhook attempt"
        );
        classify(status, retry_after, body)
    }
}

/// The resolver's permanent refusal — the SSRF guard's, or a name that does not resolve — if
/// that is what stopped the request.
fn blocked(err: &reqwest::Error) -> Option<Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        match current.downcast_ref::<Error>() {
            Some(Error::Blocked { host, addr }) => {
                return Some(Error::Blocked {
                    host: host.clone(),
                    addr: *addr,
                });
            }
            Some(Error::Unresolvable { host, reason }) => {
                return Some(Error::Unresolvable {
                    host: host.clone(),
                    reason: reason.clone(),
                });
            }
            _ => {}
        }
        source = current.source();
    }
    None
}

/// Reads at most `limit` bytes of the body (for diagnostics); the rest is never read.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> String {
    let mut collected = Vec::new();
    while collected.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - collected.len();
                collected.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    // Keep error messages short; the full (bounded) body is not needed beyond this.
    let text = String::from_utf8_lossy(&collected);
    text.chars().take(256).collect()
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

pub(crate) fn classify(status: StatusCode, retry_after: Option<Duration>, body: String) -> Outcome {
    let error = || Error::Status {
        status: status.as_u16(),
        body: body.clone(),
    };
    match status.as_u16() {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone(Failure::permanent(error())),
        408 | 429 | 500..=599 => Outcome::Retry(match retry_after {
            Some(delay) if matches!(status.as_u16(), 429 | 503) => {
                Failure::retry_after(error(), delay)
            }
            _ => Failure::retryable(error()),
        }),
        // 3xx (never followed) and the other 4xx.
        300..=499 => Outcome::Permanent(Failure::permanent(error())),
        _ => Outcome::Retry(Failure::retryable(error())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16) -> Outcome {
        classify(StatusCode::from_u16(status).unwrap(), None, String::new())
    }

    #[test]
    fn statuses_map_to_the_documented_policy() {
        for s in [200, 201, 204, 299] {
            assert!(matches!(outcome(s), Outcome::Delivered), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599, 101] {
            assert!(matches!(outcome(s), Outcome::Retry(_)), "{s}");
        }
        for s in [301, 302, 307, 308, 400, 401, 403, 404, 409, 422] {
            assert!(matches!(outcome(s), Outcome::Permanent(_)), "{s}");
        }
        assert!(matches!(outcome(410), Outcome::Gone(_)));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_kept_for_429_and_503() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(120)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(http::header::RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(http::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);

        let hinted = |status| match classify(
            StatusCode::from_u16(status).unwrap(),
            Some(Duration::from_secs(9)),
            String::new(),
        ) {
            Outcome::Retry(f) => f.retry_after_hint(),
            _ => panic!("not retried"),
        };
        assert_eq!(hinted(429), Some(Duration::from_secs(9)));
        assert_eq!(hinted(503), Some(Duration::from_secs(9)));
        assert_eq!(hinted(500), None);
    }
}
