//! Property tests of signing and verification: never a panic on arbitrary input; sign → verify
//! round-trips; any change to the signed content is rejected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use emissions_webhook::{Secret, Verifier, sign};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

fn secret() -> impl Strategy<Value = Secret> {
    proptest::collection::vec(any::<u8>(), 24..=64).prop_map(|k| Secret::from_bytes(k).unwrap())
}

fn headers(id: &[u8], ts: &[u8], sig: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in [
        ("webhook-id", id),
        ("webhook-timestamp", ts),
        ("webhook-signature", sig),
    ] {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            h.insert(name, value);
        }
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_headers_and_bodies_never_panic(
        id in proptest::collection::vec(any::<u8>(), 0..64),
        ts in proptest::collection::vec(any::<u8>(), 0..32),
        sig in proptest::collection::vec(any::<u8>(), 0..512),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        secret in secret(),
        now in any::<u64>(),
    ) {
        let verifier = Verifier::new([secret]);
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(now / 2)).unwrap_or(UNIX_EPOCH);
        let _ = verifier.verify_at(&headers(&id, &ts, &sig), &body, at);
    }

    #[test]
    fn textual_signature_lists_never_panic(sig in "[v1a,=+/ A-Za-z0-9]{0,300}", ts in "[0-9]{0,12}") {
        let verifier = Verifier::new([Secret::from_bytes(vec![1; 32]).unwrap()]);
        let _ = verifier.verify(&headers(b"msg", ts.as_bytes(), sig.as_bytes()), b"{}");
    }

    #[test]
    fn sign_then_verify_round_trips_and_detects_tampering(
        id in "[A-Za-z0-9_-]{1,40}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
        secrets in proptest::collection::vec(secret(), 1..4),
        pick in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let now = SystemTime::now();
        let ts = now.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let signature = sign(&secrets, &id, ts, &body);
        let h = headers(id.as_bytes(), ts.to_string().as_bytes(), signature.as_bytes());
        let one = secrets[pick.index(secrets.len())].clone();
        prop_assert!(Verifier::new([one.clone()]).verify_at(&h, &body, now).is_ok());
        let mut tampered = body.clone();
        if tampered.is_empty() {
            tampered.push(0);
        } else {
            let i = flip.index(tampered.len());
            tampered[i] ^= 0x01;
        }
        prop_assert!(Verifier::new([one]).verify_at(&h, &tampered, now).is_err());
    }
}
