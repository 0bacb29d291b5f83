//! The SSRF guard: never connect to internal addresses unless explicitly allowed.
//!
//! The check runs on the address actually connected to: host names go through a resolver that
//! drops internal addresses (so DNS rebinding cannot slip past a check made earlier), and
//! literal-IP URLs are checked when the endpoint is built. Proxies from the environment are not
//! used.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::Error;

/// Which addresses an endpoint may connect to. The default refuses every internal address:
/// loopback, private (RFC 1918), link-local, CGNAT (100.64/10), unique-local IPv6, unspecified,
/// multicast, broadcast, reserved and documentation ranges, local-use NAT64 (`64:ff9b:1::/48`),
/// and the IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64 and 6to4 IPv6 forms of them.
///
/// ```
/// use emissions_webhook::AddressPolicy;
/// let strict = AddressPolicy::default();
/// assert!(!strict.permits("127.0.0.1".parse().unwrap()));
/// assert!(!strict.permits("::ffff:10.0.0.1".parse().unwrap()));
/// assert!(strict.permits("93.184.216.34".parse().unwrap()));
///
/// let local_dev = AddressPolicy::default().allow("127.0.0.1/32".parse().unwrap());
/// assert!(local_dev.permits("127.0.0.1".parse().unwrap()));
/// assert!(!local_dev.permits("127.0.0.2".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
    allow_internal: bool,
}

impl AddressPolicy {
    /// Allows a network even though it is internal (e.g. `127.0.0.1/32` for local development).
    ///
    /// See [`AddressPolicy`].
    pub fn allow(mut self, network: IpNet) -> Self {
        self.allowed.push(network);
        self
    }

    /// Allows every internal address: turns the guard off. For trusted, fixed endpoints only.
    ///
    /// ```
    /// let open = emissions_webhook::AddressPolicy::default().allow_internal_networks();
    /// assert!(open.permits("10.1.2.3".parse().unwrap()));
    /// ```
    pub fn allow_internal_networks(mut self) -> Self {
        self.allow_internal = true;
        self
    }

    /// Whether a connection to `ip` is allowed.
    ///
    /// See [`AddressPolicy`].
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow_internal || self.allowed.iter().any(|net| net.contains(&ip)) || !is_internal(ip)
    }
}

/// Unwraps IPv4 addresses carried in IPv6 forms, so each range is checked once.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The IPv4 address inside IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64 and 6to4
/// addresses.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // ::ffff:a.b.c.d (mapped)
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // ::ffff:0:a.b.c.d (translated, RFC 2765)
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        // ::a.b.c.d (compatible, deprecated) — but not :: and ::1 themselves
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(tail),
        // 64:ff9b::a.b.c.d (NAT64)
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        // 2002:AABB:CCDD::/48 (6to4)
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Whether `ip` is an internal (non-public) address.
pub(crate) fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0 // "this network"
                || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
                || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || a >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0) // discard-only
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
        }
    }
}

/// Checks a literal-IP host at build time; host names are checked when resolved.
pub(crate) fn check_literal(policy: &AddressPolicy, url: &reqwest::Url) -> Result<(), Error> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    if policy.permits(ip) {
        Ok(())
    } else {
        Err(Error::Blocked {
            host: url.host_str().unwrap_or_default().to_owned(),
            addr: ip,
        })
    }
}

/// A resolver that keeps only the addresses the policy permits. A name that does not exist
/// (the resolver says so: NXDOMAIN, or no address) is asked again, with backoff, for at most
/// `bound`, then fails as [`Error::Unresolvable`] — a permanent failure, not a retry on the
/// endpoint's schedule — and is remembered as such for [`NEGATIVE_TTL`], so that a backlog
/// for it fails at once instead of one bound per event. Any other resolver failure (a
/// temporary failure, a lookup that does not finish) is a transport error, retried on the
/// schedule: a DNS outage never dead-letters events.
#[derive(Debug)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: Arc<AddressPolicy>,
    pub(crate) bound: std::time::Duration,
    pub(crate) unresolvable: Arc<Mutex<HashMap<String, (Instant, String)>>>,
}

/// How long a name found not to exist is remembered.
pub(crate) const NEGATIVE_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl GuardedResolver {
    pub(crate) fn new(policy: AddressPolicy, bound: std::time::Duration) -> Self {
        GuardedResolver {
            policy: Arc::new(policy),
            bound,
            unresolvable: Arc::default(),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let bound = self.bound;
        let unresolvable = self.unresolvable.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let known = {
                let mut known = unresolvable.lock().unwrap_or_else(|e| e.into_inner());
                known.retain(|_, (at, _)| at.elapsed() < NEGATIVE_TTL);
                known.get(&host).map(|(_, reason)| reason.clone())
            };
            if let Some(reason) = known {
                return Err(Box::new(Error::Unresolvable { host, reason }) as _);
            }
            let resolved = match lookup(&host, bound).await {
                Ok(resolved) => resolved,
                Err(Lookup::Missing(reason)) => {
                    unresolvable
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(host.clone(), (Instant::now(), reason.clone()));
                    return Err(Box::new(Error::Unresolvable { host, reason }) as _);
                }
                Err(Lookup::Failed(reason)) => {
                    return Err(format!("resolving {host}: {reason}").into());
                }
            };
            let permitted: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|addr| policy.permits(addr.ip()))
                .collect();
            match permitted.is_empty() {
                false => Ok(Box::new(permitted.into_iter()) as Addrs),
                true => Err(Box::new(Error::Blocked {
                    host,
                    addr: resolved[0].ip(),
                }) as _),
            }
        })
    }
}

/// Why a lookup gave no address.
enum Lookup {
    /// The name does not exist, or has no address: permanent.
    Missing(String),
    /// Anything else (a temporary failure, no answer in time): worth retrying later.
    Failed(String),
}

/// Whether the resolver's error says the name does not exist (glibc's EAI_NONAME and
/// EAI_NODATA, and their BSD wording), as opposed to a failure to find out.
fn does_not_exist(message: &str) -> bool {
    [
        "Name or service not known",
        "No address associated with hostname",
        "nodename nor servname provided",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Looks `host` up, again after 100 ms, 200 ms, … while `bound` lasts.
async fn lookup(host: &str, bound: std::time::Duration) -> Result<Vec<SocketAddr>, Lookup> {
    let deadline = tokio::time::Instant::now() + bound;
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        let failure = match tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, 0)))
            .await
        {
            Ok(Ok(addrs)) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if !addrs.is_empty() {
                    return Ok(addrs);
                }
                Lookup::Missing("no address".to_owned())
            }
            Ok(Err(err)) if does_not_exist(&err.to_string()) => Lookup::Missing(err.to_string()),
            Ok(Err(err)) => Lookup::Failed(err.to_string()),
            Err(_) => Lookup::Failed("the lookup did not finish in time".to_owned()),
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(failure);
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn internal(s: &str) -> bool {
        is_internal(s.parse().unwrap())
    }

    #[test]
    fn internal_ranges_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.1.2.3",
            "::ffff:0:169.254.169.254",
            "64:ff9b:1::1",
            "64:ff9b:1:ffff::8.8.8.8",
        ] {
            assert!(internal(ip), "{ip} should be internal");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "11.0.0.1",
            "2606:4700::1111",
            "::ffff:93.184.216.34",
            "64:ff9b::808:808",
            "2002:808:808::",
            "::ffff:0:8.8.8.8",
            "64:ff9b:2::1",
        ] {
            assert!(!internal(ip), "{ip} should be public");
        }
    }

    #[test]
    fn allow_list_and_switch_off() {
        let policy = AddressPolicy::default().allow("127.0.0.0/8".parse().unwrap());
        assert!(policy.permits("127.0.0.1".parse().unwrap()));
        assert!(policy.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!policy.permits("10.0.0.1".parse().unwrap()));
        assert!(
            AddressPolicy::default()
                .allow_internal_networks()
                .permits("10.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn literal_urls_are_checked_without_connecting() {
        let strict = AddressPolicy::default();
        for url in [
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://10.0.0.1/hook",
            "http://169.254.169.254/latest/meta-data",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert!(check_literal(&strict, &parsed).is_err(), "{url} passed");
        }
        let parsed = reqwest::Url::parse("https://hooks.example.com/x").unwrap();
        assert!(check_literal(&strict, &parsed).is_ok());
    }

    #[test]
    fn only_a_name_that_does_not_exist_is_permanent() {
        assert!(does_not_exist(
            "failed to lookup address information: Name or service not known"
        ));
        assert!(does_not_exist("No address associated with hostname"));
        assert!(!does_not_exist(
            "failed to lookup address information: Temporary failure in name resolution"
        ));
    }
}
