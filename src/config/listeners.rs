//! The network around the proxy: where it listens (`listen`, `[tls]`, `[admin]`), which peers
//! in front of it are believed (`trusted_proxies`), and the upstream behind it (`upstream`,
//! `[upstream_timeouts]`). Certificate files and the admin token are read and checked here, so
//! a bad one stops the start instead of failing every handshake or request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};

use super::ConfigError;
use super::origin::Origin;
use super::raw::{RawAdmin, RawTimeouts, RawTls};
use crate::tls::Certs;

/// `listen` when neither the file nor a flag sets it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `upstream` when neither the file nor a flag sets it.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3000";

/// The networks of the front proxies whose forwarding headers (`X-Forwarded-*`, `Forwarded`,
/// `X-Real-IP`, …) are passed on and extended; from any other peer they are replaced. Matched
/// once per connection, against the peer's address with an IPv4-mapped IPv6 address read as
/// the IPv4 address it is (a dual-stack listener reports IPv4 clients that way).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Parses one entry: a network (`10.0.0.0/8`, `fd00::/8`) or a bare address (a /32 or a
    /// /128). A network with host bits set (`10.0.0.1/8`) is refused: it is more often a typo
    /// for one address than a wish to trust the whole network.
    pub fn parse_entry(text: &str) -> Result<ipnet::IpNet, String> {
        let text = text.trim();
        if let Ok(ip) = text.parse::<std::net::IpAddr>() {
            return Ok(ipnet::IpNet::from(ip.to_canonical()));
        }
        let net: ipnet::IpNet = text.parse().map_err(|_| {
            format!("{text:?} is not an IP address or a network like \"10.0.0.0/8\"")
        })?;
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set: write the network ({:?}) or the address alone",
                net.trunc().to_string()
            ));
        }
        // Peers are matched as IPv4 when they are IPv4-mapped, so a mapped network must be too.
        if let ipnet::IpNet::V6(v6) = net
            && let Some(v4) = v6.network().to_ipv4_mapped()
            && v6.prefix_len() >= 96
            && let Ok(v4) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
        {
            return Ok(ipnet::IpNet::V4(v4));
        }
        Ok(net)
    }

    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a peer at `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// `[tls]`: the files were read and checked during validation, so a bad certificate or a key
/// that does not match it stops the start (exit 2) instead of failing every handshake.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The certificate in use, shared with the listener and swapped on SIGHUP.
    pub certs: Arc<Certs>,
    /// The listener's rustls config, built once over `certs`.
    pub server: Arc<rustls::ServerConfig>,
    /// `cookie.secure` was left out (its default is `false`): warned about at start, since the
    /// session cookie would then also go out over plain HTTP to the same host.
    pub cookie_secure_unset: bool,
}

/// The admin listener: its own address, and the token its routes require.
#[derive(Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Required as `Authorization: Bearer` when set. Without one, `listen` is a loopback
    /// address (checked here): only this machine's users reach it.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub response: Duration,
}

pub(super) fn listen(at: &Origin, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|e| at.bad("listen", format!("{text:?} is not an ip:port address: {e}")))
}

/// The longest `upgrade_socket` path: a Unix socket's address holds 107 bytes, and the new
/// process binds beside it under a name a dozen bytes longer before renaming it into place.
pub const UPGRADE_SOCKET_MAX: usize = 90;

/// `upgrade_socket`: a Unix socket path, short enough to bind (with room for the temporary
/// name the next process binds first). Whether its directory exists is found at start.
pub(super) fn upgrade_socket(
    at: &Origin,
    path: Option<std::path::PathBuf>,
) -> Result<Option<std::path::PathBuf>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(at.bad(
            "upgrade_socket",
            "is empty: name a Unix socket path, e.g. \"/run/session-proxy/upgrade.sock\"",
        ));
    }
    if len > UPGRADE_SOCKET_MAX {
        return Err(at.bad(
            "upgrade_socket",
            format!(
                "is {len} bytes long; a Unix socket path may be at most {UPGRADE_SOCKET_MAX} here"
            ),
        ));
    }
    if path.file_name().is_none() {
        return Err(at.bad(
            "upgrade_socket",
            format!("{} names no file", path.display()),
        ));
    }
    Ok(Some(path))
}

/// `trusted_proxies`, and the key it replaced. `trust_forwarded_headers` trusted every peer or
/// none; whatever it was set to is refused with what to write instead, so that no upgrade
/// silently starts (or stops) believing a front proxy.
pub(super) fn trusted_proxies(
    at: &Origin,
    list: Option<Vec<String>>,
    old: Option<toml::Value>,
) -> Result<TrustedProxies, ConfigError> {
    if let Some(old) = old {
        let instead = if old.as_bool() == Some(false) {
            "delete the line: without `trusted_proxies` no peer is trusted, as with false"
        } else {
            "list the addresses of your front proxies, e.g. trusted_proxies = [\"127.0.0.1\"]"
        };
        return Err(at.bad(
            "trust_forwarded_headers",
            format!("was replaced by `trusted_proxies`: {instead}"),
        ));
    }
    let nets = list
        .unwrap_or_default()
        .iter()
        .map(|entry| TrustedProxies::parse_entry(entry))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| at.bad("trusted_proxies", m))?;
    Ok(TrustedProxies::new(nets))
}

pub(super) fn parse_upstream(text: &str) -> Result<Authority, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.scheme() != Some(&Scheme::HTTP) {
        return Err(format!(
            "{text:?} must be an http:// URL (TLS to the upstream is not supported)"
        ));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!(
            "{text:?} must not have a path: requests keep their own path"
        ));
    }
    uri.authority()
        .cloned()
        .ok_or_else(|| format!("{text:?} has no host"))
}

pub(super) fn upstream_timeouts(
    at: &Origin,
    t: RawTimeouts,
) -> Result<UpstreamTimeouts, ConfigError> {
    let connect = at.duration(
        "upstream_timeouts.connect",
        &t.connect,
        Duration::from_secs(5),
    )?;
    at.positive("upstream_timeouts.connect", connect)?;
    let response = at.duration(
        "upstream_timeouts.response",
        &t.response,
        Duration::from_secs(60),
    )?;
    at.positive("upstream_timeouts.response", response)?;
    Ok(UpstreamTimeouts { connect, response })
}

/// Both files or neither; both are read and checked now (see [`Certs::open`]).
pub(super) fn tls(
    at: &Origin,
    t: RawTls,
    cookie_secure_unset: bool,
) -> Result<Option<TlsConfig>, ConfigError> {
    let (cert, key) = match (t.cert, t.key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(at.bad(
                "tls.key",
                "is required with tls.cert: the PEM file of the certificate's private key",
            ));
        }
        (None, Some(_)) => {
            return Err(at.bad(
                "tls.cert",
                "is required with tls.key: the PEM file of the certificate chain",
            ));
        }
    };
    let bad = |e: crate::tls::TlsError| at.bad(e.key(), e.to_string());
    let certs = std::sync::Arc::new(Certs::open(cert, key).map_err(bad)?);
    let server = certs.server_config().map_err(bad)?;
    Ok(Some(TlsConfig {
        certs,
        server,
        cookie_secure_unset,
    }))
}

/// Shortest token accepted: a guessable token on a network-facing admin listener would hand
/// every session to whoever guesses it.
const MIN_TOKEN: usize = 16;

pub(super) fn admin(at: &Origin, a: RawAdmin) -> Result<Option<AdminConfig>, ConfigError> {
    let Some(text) = a.listen else {
        if a.token.is_some() || a.token_file.is_some() {
            let key = if a.token.is_some() {
                "admin.token"
            } else {
                "admin.token_file"
            };
            return Err(at.bad(key, "has no effect without admin.listen"));
        }
        return Ok(None);
    };
    let listen: SocketAddr = text.parse().map_err(|e| {
        at.bad(
            "admin.listen",
            format!("{text:?} is not an ip:port address: {e}"),
        )
    })?;
    let token = match (a.token, a.token_file) {
        (Some(_), Some(_)) => {
            return Err(at.bad(
                "admin.token_file",
                "give either admin.token or admin.token_file, not both",
            ));
        }
        (Some(t), None) => Some(("admin.token", t.as_str().to_owned())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                at.bad(
                    "admin.token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Some(("admin.token_file", text.trim().to_owned()))
        }
        (None, None) => None,
    };
    if let Some((key, t)) = &token
        && (t.len() < MIN_TOKEN || t.bytes().any(|b| !b.is_ascii_graphic()))
    {
        return Err(at.bad(
            key,
            format!(
                "the token must be at least {MIN_TOKEN} printable characters without spaces, got {}",
                t.len()
            ),
        ));
    }
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(at.bad(
            "admin.listen",
            format!(
                "{listen} is not a loopback address: an admin listener reachable from the network needs admin.token or admin.token_file"
            ),
        ));
    }
    Ok(Some(AdminConfig {
        listen,
        token: token.map(|(_, t)| t),
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::validate::check;

    /// A path a Unix socket cannot bind (with the new process's temporary name) is refused at
    /// start, naming the key; a short one is kept as written.
    #[test]
    fn upgrade_socket_is_a_path_short_enough_to_bind() {
        let long = format!("upgrade_socket = \"/run/{}.sock\"", "x".repeat(90));
        let err = check(&long).unwrap_err();
        assert!(
            err.contains("upgrade_socket") && err.contains("at most 90"),
            "{err}"
        );
        let c = check("upgrade_socket = \"/run/session-proxy/upgrade.sock\"").unwrap();
        assert_eq!(
            c.upgrade_socket.unwrap(),
            std::path::Path::new("/run/session-proxy/upgrade.sock")
        );
        assert!(check("").unwrap().upgrade_socket.is_none());
    }

    #[test]
    fn trusted_proxies_match_networks_and_bare_addresses() {
        let c = check(
            "trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"::1\", \"fd00::/8\", \"::ffff:198.51.100.0/120\"]",
        )
        .unwrap();
        let trusted = |ip: &str| c.trusted_proxies.contains(ip.parse().unwrap());
        for ip in [
            "10.0.0.1",
            "10.255.255.255",
            "192.0.2.7",
            "::1",
            "fd12:3456::1",
            // IPv4-mapped peers (a dual-stack listener) are the IPv4 address they carry.
            "::ffff:10.1.2.3",
            "::ffff:192.0.2.7",
            // A mapped network is an IPv4 one.
            "198.51.100.9",
            "::ffff:198.51.100.200",
        ] {
            assert!(trusted(ip), "{ip}");
        }
        for ip in [
            "11.0.0.1",
            "192.0.2.8",
            "127.0.0.1",
            "::2",
            "fe80::1",
            "::ffff:11.0.0.1",
            "198.51.101.1",
        ] {
            assert!(!trusted(ip), "{ip}");
        }
        assert!(check("").unwrap().trusted_proxies.is_empty());
        assert!(
            !check("")
                .unwrap()
                .trusted_proxies
                .contains("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn a_bad_trusted_proxy_names_the_key_and_the_value() {
        for (entry, want) in [
            (
                "10.0.0.0/33",
                "\"10.0.0.0/33\" is not an IP address or a network",
            ),
            (
                "localhost",
                "\"localhost\" is not an IP address or a network",
            ),
            (
                "10.0.0.1/8",
                "\"10.0.0.1/8\" has host bits set: write the network (\"10.0.0.0/8\")",
            ),
            ("", "\"\" is not an IP address"),
        ] {
            let err =
                check(&format!("trusted_proxies = [\"127.0.0.1\", \"{entry}\"]")).unwrap_err();
            assert!(err.starts_with("t.toml: `trusted_proxies`: "), "{err}");
            assert!(err.contains(want), "{entry:?}: {err}");
        }
        let err = check("trusted_proxies = \"10.0.0.0/8\"").unwrap_err();
        assert!(err.starts_with("t.toml: `trusted_proxies`: "), "{err}");
    }

    /// The old all-or-nothing key is refused, whatever its value, with what to write instead.
    #[test]
    fn trust_forwarded_headers_is_refused_with_its_replacement() {
        assert_eq!(
            check("trust_forwarded_headers = true").unwrap_err(),
            "t.toml: `trust_forwarded_headers`: was replaced by `trusted_proxies`: list the \
             addresses of your front proxies, e.g. trusted_proxies = [\"127.0.0.1\"]"
        );
        assert_eq!(
            check("trust_forwarded_headers = false").unwrap_err(),
            "t.toml: `trust_forwarded_headers`: was replaced by `trusted_proxies`: delete the \
             line: without `trusted_proxies` no peer is trusted, as with false"
        );
        let err =
            check("trust_forwarded_headers = \"yes\"\ntrusted_proxies = [\"::1\"]").unwrap_err();
        assert!(
            err.starts_with(
                "t.toml: `trust_forwarded_headers`: was replaced by `trusted_proxies`: list"
            ),
            "{err}"
        );
    }
}
