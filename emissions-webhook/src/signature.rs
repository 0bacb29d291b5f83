//! Standard Webhooks signing: secrets, the `v1` HMAC-SHA256 scheme, and the receivers' verifier.
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`; the signature is `v1,` +
//! base64 of its HMAC-SHA256 under the secret. Several secrets produce several space-separated
//! signatures, so a receiver can rotate keys without downtime.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::Error;

type HmacSha256 = Hmac<Sha256>;

/// `webhook-id`: the event id, the same on every attempt.
pub const WEBHOOK_ID: &str = "webhook-id";
/// `webhook-timestamp`: seconds since the Unix epoch, per attempt.
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// `webhook-signature`: space-separated `v1,<base64>` signatures.
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

const PREFIX: &str = "whsec_";
/// Longest `webhook-signature` header the verifier reads.
const MAX_SIGNATURE_HEADER: usize = 4096;

/// A symmetric signing secret: `whsec_` followed by base64 of 24 to 64 random bytes.
///
/// ```
/// use emissions_webhook::Secret;
/// let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// assert_eq!(secret.to_whsec(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
/// assert!(Secret::parse("whsec_").is_err());
/// assert!(Secret::parse("not base64!").is_err());
/// # Ok::<(), emissions_webhook::Error>(())
/// ```
#[derive(Clone)]
pub struct Secret {
    key: Vec<u8>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Secret {
    /// Parses `whsec_<base64>` (the prefix may be left out).
    ///
    /// See [`Secret`].
    pub fn parse(text: &str) -> Result<Self, Error> {
        let encoded = text.trim().strip_prefix(PREFIX).unwrap_or(text.trim());
        if encoded.is_empty() {
            return Err(Error::InvalidSecret("empty"));
        }
        let key = B64
            .decode(encoded)
            .map_err(|_| Error::InvalidSecret("not base64"))?;
        Self::from_bytes(key)
    }

    /// Uses raw key bytes (24 to 64 of them).
    ///
    /// ```
    /// assert!(emissions_webhook::Secret::from_bytes(vec![7; 32]).is_ok());
    /// assert!(emissions_webhook::Secret::from_bytes(vec![7; 8]).is_err());
    /// ```
    pub fn from_bytes(key: Vec<u8>) -> Result<Self, Error> {
        match key.len() {
            0..24 => Err(Error::InvalidSecret("shorter than 24 bytes")),
            24..=64 => Ok(Secret { key }),
            _ => Err(Error::InvalidSecret("longer than 64 bytes")),
        }
    }

    /// The secret in its `whsec_` form, to hand to a receiver.
    ///
    /// ```
    /// let s = emissions_webhook::Secret::from_bytes(vec![0; 24]).unwrap();
    /// assert_eq!(s.to_whsec(), "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    /// ```
    pub fn to_whsec(&self) -> String {
        format!("{PREFIX}{}", B64.encode(&self.key))
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The `webhook-signature` value for a message: one `v1,<base64>` per secret, space-separated.
///
/// ```
/// use emissions_webhook::{sign, Secret};
/// let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let header = sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
/// assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
/// # Ok::<(), emissions_webhook::Error>(())
/// ```
pub fn sign(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    secrets
        .iter()
        .map(|s| {
            let tag = s.mac(id, &timestamp, body).finalize().into_bytes();
            format!("v1,{}", B64.encode(tag))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Verifies Standard Webhooks signatures on the receiving side.
///
/// Checks that `webhook-id`, `webhook-timestamp` and `webhook-signature` are present, that the
/// timestamp is within the tolerance of now in both directions (default 5 minutes), and that at
/// least one `v1` signature matches one of the secrets, compared in constant time. Signatures of
/// other versions are skipped; an empty, truncated or over-long signature never matches.
///
/// ```
/// use emissions_webhook::{sign, Secret, Verifier};
/// use http::HeaderMap;
///
/// let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
/// let body = br#"{"type":"order_created"}"#;
/// let now = std::time::SystemTime::now();
/// let ts = now.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("webhook-id", "evt_1".parse().unwrap());
/// headers.insert("webhook-timestamp", ts.to_string().parse().unwrap());
/// headers.insert("webhook-signature", sign(&[secret.clone()], "evt_1", ts, body).parse().unwrap());
///
/// let verifier = Verifier::new([secret]);
/// assert!(verifier.verify(&headers, body).is_ok());
/// assert!(verifier.verify(&headers, b"tampered").is_err());
/// # Ok::<(), emissions_webhook::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Verifier {
    secrets: Vec<Secret>,
    tolerance: Duration,
}

impl Verifier {
    /// A verifier accepting signatures by any of `secrets`.
    ///
    /// See [`Verifier`].
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        Verifier {
            secrets: secrets.into_iter().collect(),
            tolerance: Duration::from_secs(300),
        }
    }

    /// How far the timestamp may be from now, in either direction. Defaults to 5 minutes.
    ///
    /// ```
    /// # use emissions_webhook::{Secret, Verifier};
    /// let v = Verifier::new([Secret::from_bytes(vec![1; 32]).unwrap()])
    ///     .tolerance(std::time::Duration::from_secs(60));
    /// # let _ = v;
    /// ```
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Verifies a request against the current time.
    ///
    /// See [`Verifier`].
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Error> {
        self.verify_at(headers, body, SystemTime::now())
    }

    /// Verifies a request as of `now`.
    ///
    /// ```
    /// # use emissions_webhook::{Secret, Verifier};
    /// # use http::HeaderMap;
    /// let v = Verifier::new([Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?]);
    /// let mut h = HeaderMap::new();
    /// h.insert("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek".parse().unwrap());
    /// h.insert("webhook-timestamp", "1614265330".parse().unwrap());
    /// h.insert("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".parse().unwrap());
    /// let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1614265330);
    /// assert!(v.verify_at(&h, br#"{"test": 2432232314}"#, at).is_ok());
    /// # Ok::<(), emissions_webhook::Error>(())
    /// ```
    pub fn verify_at(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Error> {
        let id = header(headers, WEBHOOK_ID)?;
        let timestamp = header(headers, WEBHOOK_TIMESTAMP)?;
        let signatures = header(headers, WEBHOOK_SIGNATURE)?;
        if !(1..=19).contains(&timestamp.len()) || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::MalformedHeader(WEBHOOK_TIMESTAMP));
        }
        let sent: i64 = timestamp
            .parse()
            .map_err(|_| Error::MalformedHeader(WEBHOOK_TIMESTAMP))?;
        let now = unix_seconds(now);
        let tolerance = i64::try_from(self.tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(sent) > tolerance {
            return Err(Error::TimestampTooOld);
        }
        if sent.saturating_sub(now) > tolerance {
            return Err(Error::TimestampInFuture);
        }
        if signatures.len() > MAX_SIGNATURE_HEADER {
            return Err(Error::MalformedHeader(WEBHOOK_SIGNATURE));
        }
        let candidates: Vec<Vec<u8>> = signatures
            .split(' ')
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == "v1")
            .filter_map(|(_, encoded)| B64.decode(encoded).ok())
            .collect();
        let matched = self.secrets.iter().any(|secret| {
            candidates
                .iter()
                // `verify_slice` compares in constant time and rejects any length but 32.
                .any(|candidate| {
                    secret
                        .mac(id, timestamp, body)
                        .verify_slice(candidate)
                        .is_ok()
                })
        });
        if matched {
            Ok(())
        } else {
            Err(Error::NoMatchingSignature)
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, Error> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .ok_or(Error::MissingHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(ts: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    }

    fn headers(id: Option<&str>, ts: Option<&str>, sig: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            (WEBHOOK_ID, id),
            (WEBHOOK_TIMESTAMP, ts),
            (WEBHOOK_SIGNATURE, sig),
        ] {
            if let Some(value) = value {
                h.insert(name, value.parse().unwrap());
            }
        }
        h
    }

    fn verifier() -> Verifier {
        Verifier::new([Secret::parse(SECRET).unwrap()])
    }

    fn check(sig: &str) -> Result<(), Error> {
        verifier().verify_at(
            &headers(Some(ID), Some("1614265330"), Some(sig)),
            BODY,
            at(TS),
        )
    }

    #[test]
    fn reproduces_the_specification_test_vector() {
        assert_eq!(
            sign(&[Secret::parse(SECRET).unwrap()], ID, TS, BODY),
            SIGNATURE
        );
        assert!(check(SIGNATURE).is_ok());
    }

    #[test]
    fn several_secrets_sign_and_any_verifies() {
        let old = Secret::from_bytes(vec![1; 32]).unwrap();
        let new = Secret::from_bytes(vec![2; 32]).unwrap();
        let header = sign(&[new.clone(), old.clone()], ID, TS, BODY);
        assert_eq!(header.split(' ').count(), 2);
        let h = headers(Some(ID), Some("1614265330"), Some(&header));
        for secret in [old, new] {
            assert!(Verifier::new([secret]).verify_at(&h, BODY, at(TS)).is_ok());
        }
        let stranger = Secret::from_bytes(vec![3; 32]).unwrap();
        assert!(matches!(
            Verifier::new([stranger]).verify_at(&h, BODY, at(TS)),
            Err(Error::NoMatchingSignature)
        ));
    }

    #[test]
    fn rejects_bad_signatures() {
        let valid = &SIGNATURE[3..];
        for bad in [
            "v1,",
            "v1",
            "",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1O==",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=AAAA",
            "v1,g0hM9SsE+OTPJTGt",
            &format!("v2,{valid}"),
            &format!("v1a,{valid}"),
            &format!("V1,{valid}"),
            "v1,!!!!",
        ] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
        // One valid among junk still verifies (rotation).
        assert!(check(&format!("v2,xyz v1, {SIGNATURE}")).is_ok());
    }

    #[test]
    fn rejects_missing_headers() {
        let v = verifier();
        let cases = [
            (
                headers(None, Some("1614265330"), Some(SIGNATURE)),
                WEBHOOK_ID,
            ),
            (headers(Some(ID), None, Some(SIGNATURE)), WEBHOOK_TIMESTAMP),
            (
                headers(Some(ID), Some("1614265330"), None),
                WEBHOOK_SIGNATURE,
            ),
            (
                headers(Some(""), Some("1614265330"), Some(SIGNATURE)),
                WEBHOOK_ID,
            ),
        ];
        for (h, name) in cases {
            assert!(
                matches!(v.verify_at(&h, BODY, at(TS)), Err(Error::MissingHeader(n)) if n == name)
            );
        }
    }

    #[test]
    fn rejects_stale_future_and_malformed_timestamps() {
        let v = verifier();
        let h = headers(Some(ID), Some("1614265330"), Some(SIGNATURE));
        assert!(v.verify_at(&h, BODY, at(TS + 300)).is_ok());
        assert!(v.verify_at(&h, BODY, at(TS - 300)).is_ok());
        assert!(matches!(
            v.verify_at(&h, BODY, at(TS + 301)),
            Err(Error::TimestampTooOld)
        ));
        assert!(matches!(
            v.verify_at(&h, BODY, at(TS - 301)),
            Err(Error::TimestampInFuture)
        ));
        for ts in [
            "",
            "-1614265330",
            "1614265330.5",
            " 1614265330",
            "99999999999999999999",
            "1e9",
        ] {
            let h = headers(Some(ID), Some(ts), Some(SIGNATURE));
            assert!(v.verify_at(&h, BODY, at(TS)).is_err(), "{ts:?} accepted");
        }
    }

    #[test]
    fn rejects_a_different_id_or_body() {
        let v = verifier();
        let h = headers(Some("msg_other"), Some("1614265330"), Some(SIGNATURE));
        assert!(v.verify_at(&h, BODY, at(TS)).is_err());
        let h = headers(Some(ID), Some("1614265330"), Some(SIGNATURE));
        assert!(v.verify_at(&h, br#"{"test": 2432232315}"#, at(TS)).is_err());
    }

    #[test]
    fn secrets_must_be_base64_of_24_to_64_bytes() {
        assert!(Secret::parse(SECRET).is_ok());
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_ok());
        for bad in ["", "whsec_", "whsec_short", "whsec_!!!!", "whsec_AAAA"] {
            assert!(Secret::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Secret::from_bytes(vec![0; 65]).is_err());
        let round = Secret::from_bytes(vec![9; 40]).unwrap().to_whsec();
        assert_eq!(Secret::parse(&round).unwrap().key, vec![9; 40]);
    }
}
