//! Who the client is, and how the app is told: [`Peer`] (the client end of one downstream
//! connection, learned once when it is accepted) and [`set_headers`], which writes this hop's
//! `X-Forwarded-*`, `X-Real-IP` and `Forwarded` (RFC 7239) headers. From a peer outside
//! `trusted_proxies` every forwarding header the client sent is removed or overwritten, so both
//! chains start at the peer; a trusted peer's chains are kept, checked and extended.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::header::{FORWARDED, HeaderMap, HeaderName, HeaderValue};

use crate::config::TrustedProxies;
use crate::http::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// Who is on the other end of a connection, in the forms the request path needs: formatted
/// once per connection rather than once per request.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client's IP as `X-Forwarded-For` and `X-Real-IP` name it.
    pub forwarded_for: HeaderValue,
    /// The scheme the client used to reach this hop, as `X-Forwarded-Proto` says it.
    pub proto: HeaderValue,
    /// The port the client connected to, as `X-Forwarded-Port` says it.
    pub port: Option<HeaderValue>,
    /// The client's IP as a `Forwarded` `for=` names it (RFC 7239 §6: IPv6 bracketed and
    /// quoted).
    pub forwarded_node: HeaderValue,
    /// Whether the peer is one of `trusted_proxies`, so its forwarding headers are passed on:
    /// decided once here, leaving each request a bool to read.
    pub trusted: bool,
}

impl Peer {
    /// A client on a plain-HTTP connection to `local`.
    pub fn new(addr: SocketAddr, local: Option<SocketAddr>) -> Self {
        // A dual-stack listener reports an IPv4 client as `::ffff:a.b.c.d`; the app is told
        // the IPv4 address, as trust decisions read it.
        let ip = addr.ip().to_canonical();
        let node = forwarded_node(ip);
        let ip = ip.to_string();
        Peer {
            addr,
            // An IP address is always a valid header value.
            forwarded_for: HeaderValue::from_maybe_shared(bytes::Bytes::from(ip))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static("http"),
            port: local.map(|l| HeaderValue::from(l.port())),
            forwarded_node: HeaderValue::from_str(&node)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            trusted: false,
        }
    }

    /// The same peer, trusted if its address is in `proxies`.
    pub fn trusting(mut self, proxies: &TrustedProxies) -> Self {
        self.trusted = proxies.contains(self.addr.ip());
        self
    }

    /// The same client, on a connection whose TLS this hop terminated: the app is told `https`.
    pub fn over_tls(mut self) -> Self {
        self.proto = HeaderValue::from_static("https");
        self
    }

    /// A client on a plain-HTTP connection whose local end is unknown.
    pub fn plain(addr: SocketAddr) -> Self {
        Self::new(addr, None)
    }
}

/// The client's address as the forwarding rules trust it: the peer's, or, from a peer in
/// `trusted_proxies`, the nearest address of its `X-Forwarded-For` chain that is not itself a
/// trusted proxy (the farthest one when all are). An entry that is no address ends the walk
/// at the last trusted hop. No allocation.
pub fn client_ip(headers: &HeaderMap, peer: &Peer, proxies: &TrustedProxies) -> IpAddr {
    let mut last = peer.addr.ip().to_canonical();
    if !peer.trusted {
        return last;
    }
    for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(line) = line.to_str() else {
            return last;
        };
        for entry in line.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            let ip = entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()));
            let Ok(ip) = ip.map(|ip| ip.to_canonical()) else {
                return last;
            };
            if !proxies.contains(ip) {
                return ip;
            }
            last = ip;
        }
    }
    last
}

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers an app (or its framework) may take as the client's address, scheme, host, port or
/// path, besides the three `X-Forwarded-*` this hop sets. Clients that reach the proxy directly
/// could set any of them, so from a peer that is not in `trusted_proxies` they are removed (or,
/// for `Forwarded`, `X-Real-IP` and `X-Forwarded-Port`, overwritten with what this hop saw).
/// Compared with `_` read as `-`, as CGI-style servers read them.
const FORWARDING: [&str; 16] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-proxyuser-ip",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
    "x-url-scheme",
    "front-end-https",
];

/// Whether `name`, with `_` read as `-`, equals `want` (lowercase, written with `-`).
fn same_name(name: &str, want: &str) -> bool {
    name.len() == want.len()
        && name
            .bytes()
            .zip(want.bytes())
            .all(|(n, w)| n == w || (n == b'_' && w == b'-'))
}

/// Whether `name` (with `_` read as `-`) starts with `prefix`.
fn starts_with_name(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && same_name(&name[..prefix.len()], prefix)
}

/// A forwarding header the client may not set unless a trusted front proxy vouches for it.
fn is_forwarding(name: &HeaderName) -> bool {
    let name = name.as_str();
    starts_with_name(name, "x-forwarded-") || FORWARDING.iter().any(|f| same_name(name, f))
}

/// A spelling with `_` of a header this hop sets: never a real front proxy's, always a trick
/// on servers that read `_` and `-` alike.
fn is_underscore_alias(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.contains('_')
        && [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "x-real-ip",
            "host",
        ]
        .iter()
        .any(|f| same_name(name, f))
}

/// Removes every header `pred` picks, allocating only if there is one.
fn remove_where(headers: &mut HeaderMap, pred: impl Fn(&HeaderName) -> bool) {
    if !headers.keys().any(&pred) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| pred(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Sets this hop's forwarding headers on a request from `peer` that called `host`.
///
/// This hop's element (`for`, `proto`, `host`) always ends the `Forwarded` chain (RFC 7239) and
/// its address the `X-Forwarded-For` chain. From a peer that is not in `trusted_proxies`, every
/// forwarding header the client sent is removed or overwritten, so both chains start at the
/// peer. A trusted peer's chains are kept and extended, as are its `X-Forwarded-Proto`, `-Host`,
/// `-Port` and `X-Real-IP`.
pub fn set_headers(headers: &mut HeaderMap, peer: &Peer, host: Option<&HeaderValue>) {
    let trust = peer.trusted;
    if trust {
        remove_where(headers, is_underscore_alias);
    } else {
        remove_where(headers, |n| is_forwarding(n) || is_underscore_alias(n));
    }
    let element = forwarded_element(peer, host);
    let (xff, forwarded) = if trust {
        trusted_chains(headers, peer, element)
    } else {
        (peer.forwarded_for.clone(), element)
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(FORWARDED, forwarded);
    let keep = |headers: &HeaderMap, name: &HeaderName| trust && headers.contains_key(name);
    if let Some(host) = host
        && !keep(headers, &X_FORWARDED_HOST)
    {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    if !keep(headers, &X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, peer.proto.clone());
    }
    if !trust {
        headers.insert(X_REAL_IP, peer.forwarded_for.clone());
        if let Some(port) = &peer.port {
            headers.insert(X_FORWARDED_PORT, port.clone());
        }
    }
}

/// Every field line of `name` joined into one list (RFC 9110 §5.3), or `None` if there is none
/// or the list holds nothing but whitespace and commas.
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut lines = headers.get_all(name).iter();
    let mut list = lines.next()?.as_bytes().to_vec();
    for line in lines {
        list.extend_from_slice(b", ");
        list.extend_from_slice(line.as_bytes());
    }
    list.iter()
        .any(|b| !matches!(b, b' ' | b'\t' | b','))
        .then_some(list)
}

/// `list, last`, as a header value.
fn extended(mut list: Vec<u8>, last: &[u8]) -> Option<HeaderValue> {
    list.extend_from_slice(b", ");
    list.extend_from_slice(last);
    HeaderValue::from_bytes(&list).ok()
}

/// A trusted peer's `X-Forwarded-For` and `Forwarded` chains, each extended by this hop. The
/// two say the same thing: when the peer sent one and not the other (nginx's usual
/// `X-Forwarded-For` alone), the missing one is written from the other, so that an app reading
/// `Forwarded` first (as Spring does) does not take the front proxy for the client. A malformed
/// `Forwarded` is not passed on: it is replaced as if the peer had sent none.
fn trusted_chains(
    headers: &HeaderMap,
    peer: &Peer,
    element: HeaderValue,
) -> (HeaderValue, HeaderValue) {
    let xff = joined(headers, &X_FORWARDED_FOR);
    let forwarded =
        joined(headers, &FORWARDED).and_then(|list| match forwarded_for_values(&list) {
            Some(nodes) => Some((list, nodes)),
            None => {
                tracing::debug!("malformed Forwarded from a trusted proxy replaced");
                None
            }
        });
    let new_forwarded = match (&forwarded, &xff) {
        (Some((list, _)), _) => extended(list.clone(), element.as_bytes()),
        (None, Some(list)) => extended(forwarded_from_xff(list), element.as_bytes()),
        (None, None) => None,
    };
    let new_xff = match (xff, forwarded) {
        (Some(list), _) => extended(list, peer.forwarded_for.as_bytes()),
        (None, Some((_, nodes))) => extended(xff_from_nodes(&nodes), peer.forwarded_for.as_bytes()),
        (None, None) => None,
    };
    (
        new_xff.unwrap_or_else(|| peer.forwarded_for.clone()),
        new_forwarded.unwrap_or(element),
    )
}

/// This hop's `Forwarded` element (RFC 7239 §4): `for` the peer, `proto` the scheme it used,
/// `host` the name it called (left out when there is none).
///
/// Written into a buffer of exactly its length, which becomes the value's bytes as it is: one
/// allocation per request, where `HeaderValue::from_bytes` copied the buffer into a second.
fn forwarded_element(peer: &Peer, host: Option<&HeaderValue>) -> HeaderValue {
    let host = host.filter(|h| !h.is_empty());
    let len = b"for=".len()
        + peer.forwarded_node.len()
        + b";proto=".len()
        + value_len(peer.proto.as_bytes())
        + host.map_or(0, |h| b";host=".len() + value_len(h.as_bytes()));
    let mut element = Vec::with_capacity(len);
    element.extend_from_slice(b"for=");
    element.extend_from_slice(peer.forwarded_node.as_bytes());
    element.extend_from_slice(b";proto=");
    push_value(&mut element, peer.proto.as_bytes());
    if let Some(host) = host {
        element.extend_from_slice(b";host=");
        push_value(&mut element, host.as_bytes());
    }
    debug_assert_eq!(element.len(), len, "value_len disagrees with push_value");
    // Every byte came from a header value or is ASCII punctuation: always a valid value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(element))
        .unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

/// Whether `value` is a token, written as it is by [`push_value`].
fn is_token(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().copied().all(is_tchar)
}

/// How many bytes [`push_value`] writes for `value`.
fn value_len(value: &[u8]) -> usize {
    if is_token(value) {
        value.len()
    } else {
        2 + value.len() + value.iter().filter(|&&b| b == b'"' || b == b'\\').count()
    }
}

/// RFC 9110 §5.6.2 `tchar`: one table lookup per byte, as every request's `Forwarded` element
/// is checked byte by byte (a scan of the punctuation list per byte cost more than the copy the
/// exact-length buffer above saves; bench/PROFILE.md, "[perf-3] experiments").
fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// A `Forwarded` value (RFC 7239 §4: `token / quoted-string`): as it is when it is a token,
/// else quoted, with `"` and `\` escaped (RFC 9110 §5.6.4).
fn push_value(out: &mut Vec<u8>, value: &[u8]) {
    if is_token(value) {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// The `for` value of each element of a `Forwarded` list (unquoted; `None` where an element has
/// none), or `None` if the list does not follow RFC 7239 §4: `1#forwarded-element`, each
/// `[ pair ] *( ";" [ pair ] )`, a pair `token "=" ( token / quoted-string )`, no parameter
/// twice in one element. Whitespace is allowed around `,` (the list rule) and `;`.
fn forwarded_for_values(list: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
    let ows = |i: &mut usize| {
        while list.get(*i).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            *i += 1;
        }
    };
    let mut fors = Vec::new();
    let mut i = 0;
    loop {
        ows(&mut i);
        match list.get(i) {
            None => break,
            // An empty list element, which a recipient ignores (RFC 9110 §5.6.1).
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut for_value = None;
        loop {
            ows(&mut i);
            match list.get(i) {
                None | Some(b',') => break,
                Some(b';') => {
                    i += 1;
                    continue;
                }
                Some(_) => {}
            }
            let start = i;
            while list.get(i).copied().is_some_and(is_tchar) {
                i += 1;
            }
            let name = list[start..i].to_ascii_lowercase();
            if name.is_empty() || list.get(i) != Some(&b'=') || names.contains(&name) {
                return None;
            }
            i += 1;
            let value = if list.get(i) == Some(&b'"') {
                quoted(list, &mut i)?
            } else {
                let start = i;
                while list.get(i).copied().is_some_and(is_tchar) {
                    i += 1;
                }
                if i == start {
                    return None;
                }
                list[start..i].to_vec()
            };
            if name == b"for" {
                for_value = Some(value);
            }
            names.push(name);
            ows(&mut i);
            match list.get(i) {
                None | Some(b',') => break,
                Some(b';') => i += 1,
                Some(_) => return None,
            }
        }
        fors.push(for_value);
        if list.get(i) == Some(&b',') {
            i += 1;
        }
    }
    (!fors.is_empty()).then_some(fors)
}

/// The content of the quoted-string that starts at `list[*i]`, leaving `*i` after it.
fn quoted(list: &[u8], i: &mut usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    *i += 1;
    loop {
        let b = *list.get(*i)?;
        *i += 1;
        match b {
            b'"' => return Some(out),
            b'\\' => {
                let escaped = *list.get(*i)?;
                *i += 1;
                out.push(escaped);
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => out.push(b),
            _ => return None,
        }
    }
}

/// The address a `Forwarded` node names (`192.0.2.1`, `192.0.2.1:80`, `[2001:db8::1]`,
/// `[2001:db8::1]:80`), if it names one.
fn node_ip(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (ip, tail) = rest.split_once(']')?;
        let ip: Ipv6Addr = ip.parse().ok()?;
        return (tail.is_empty() || tail.starts_with(':')).then_some(IpAddr::V6(ip));
    }
    let host = node.split_once(':').map_or(node, |(host, _)| host);
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// An `X-Forwarded-For` list saying what a `Forwarded` list's `for` values say: each address
/// without its port, `unknown` and obfuscated names (RFC 7239 §6.2, §6.3) as they are.
fn xff_from_nodes(nodes: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut list = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        if n > 0 {
            list.extend_from_slice(b", ");
        }
        let node = node.as_deref().and_then(|v| std::str::from_utf8(v).ok());
        match node {
            Some(node) => match node_ip(node) {
                Some(ip) => list.extend_from_slice(ip.to_string().as_bytes()),
                None if node.bytes().all(is_tchar) && !node.is_empty() => {
                    list.extend_from_slice(node.as_bytes());
                }
                None => list.extend_from_slice(b"unknown"),
            },
            None => list.extend_from_slice(b"unknown"),
        }
    }
    list
}

/// An address as a `Forwarded` node (RFC 7239 §6): IPv4 as a token, IPv6 in brackets, and
/// then quoted, since `[` and `:` are not token characters.
fn forwarded_node(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

/// A `Forwarded` list saying what an `X-Forwarded-For` list says: one `for=` element per entry.
fn forwarded_from_xff(xff: &[u8]) -> Vec<u8> {
    let mut list = Vec::new();
    let entries = xff
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|e| !e.is_empty());
    for entry in entries {
        if !list.is_empty() {
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(b"for=");
        let text = std::str::from_utf8(entry).unwrap_or("");
        if let Ok(ip) = text.parse::<IpAddr>() {
            list.extend_from_slice(forwarded_node(ip).as_bytes());
        } else if let Ok(addr) = text.parse::<SocketAddr>() {
            push_value(&mut list, addr.to_string().as_bytes());
        } else if entry.iter().copied().all(is_tchar) {
            list.extend_from_slice(entry);
        } else {
            list.extend_from_slice(b"unknown");
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_named_once_for_each_header() {
        let v4 = Peer::plain("192.0.2.60:4711".parse().unwrap());
        assert_eq!(v4.forwarded_for, "192.0.2.60");
        assert_eq!(v4.forwarded_node, "192.0.2.60");
        let v6 = Peer::plain("[2001:db8:cafe::17]:4711".parse().unwrap());
        assert_eq!(v6.forwarded_for, "2001:db8:cafe::17");
        assert_eq!(v6.forwarded_node, "\"[2001:db8:cafe::17]\"");
        let mapped = Peer::plain("[::ffff:192.0.2.60]:4711".parse().unwrap());
        assert_eq!(mapped.forwarded_for, "192.0.2.60");
        assert_eq!(mapped.forwarded_node, "192.0.2.60");
        assert!(!mapped.trusted);
        let proxies = TrustedProxies::new(vec!["192.0.2.0/24".parse().unwrap()]);
        assert!(mapped.trusting(&proxies).trusted);
        assert!(!v6.trusting(&proxies).trusted);
    }

    #[test]
    fn the_tchar_table_is_rfc_9110s() {
        for b in 0..=255u8 {
            let listed = b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            assert_eq!(is_tchar(b), listed, "{b}");
        }
    }

    #[test]
    fn forwarding_names_match_in_every_spelling() {
        for name in [
            "forwarded",
            "x-real-ip",
            "x_real_ip",
            "x-forwarded-port",
            "x_forwarded_for",
            "x-forwarded-anything",
            "true-client-ip",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(is_forwarding(&name), "{name}");
        }
        for name in ["x-forwarder", "accept", "x-really"] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(!is_forwarding(&name), "{name}");
        }
        assert!(is_underscore_alias(&HeaderName::from_static(
            "x_forwarded_for"
        )));
        assert!(!is_underscore_alias(&HeaderName::from_static(
            "x-forwarded-for"
        )));
    }

    fn peer(addr: &str) -> Peer {
        Peer::plain(addr.parse().unwrap())
    }

    /// RFC 7239 §4 and §6: IPv6 nodes bracketed and quoted, a value that is not a token quoted
    /// with `"` and `\` escaped, `host` left out when there is none.
    #[test]
    fn this_hops_forwarded_element_quotes_what_is_not_a_token() {
        let host = |h: &'static str| Some(HeaderValue::from_static(h));
        let cases = [
            (
                "192.0.2.60:1",
                host("example.com"),
                "for=192.0.2.60;proto=http;host=example.com",
            ),
            (
                "[2001:db8:cafe::17]:1",
                host("example.com:8080"),
                "for=\"[2001:db8:cafe::17]\";proto=http;host=\"example.com:8080\"",
            ),
            (
                "[::ffff:192.0.2.60]:1",
                host("[::1]:8443"),
                "for=192.0.2.60;proto=http;host=\"[::1]:8443\"",
            ),
            ("127.0.0.1:1", None, "for=127.0.0.1;proto=http"),
            ("127.0.0.1:1", host(""), "for=127.0.0.1;proto=http"),
        ];
        for (addr, host, want) in cases {
            assert_eq!(
                forwarded_element(&peer(addr), host.as_ref()),
                want,
                "{addr}"
            );
        }
        let mut out = Vec::new();
        push_value(&mut out, br#"a "b" \c"#);
        assert_eq!(out, br#""a \"b\" \\c""#);
        let mut out = Vec::new();
        push_value(&mut out, b"");
        assert_eq!(out, b"\"\"");
    }

    #[test]
    fn forwarded_lists_are_parsed_by_rfc_7239_or_refused() {
        let fors = |list: &str| {
            forwarded_for_values(list.as_bytes()).map(|v| {
                v.into_iter()
                    .map(|f| f.map(|f| String::from_utf8(f).unwrap()))
                    .collect::<Vec<_>>()
            })
        };
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(
            fors("for=192.0.2.43, for=\"[2001:db8:cafe::17]\";proto=https;by=203.0.113.60"),
            Some(vec![s("192.0.2.43"), s("[2001:db8:cafe::17]")])
        );
        assert_eq!(fors("For=unknown ;Proto=http"), Some(vec![s("unknown")]));
        assert_eq!(
            fors("proto=https,,for=_hidden"),
            Some(vec![None, s("_hidden")])
        );
        assert_eq!(fors("for=\"a\\\"b\""), Some(vec![s("a\"b")]));
        assert_eq!(fors("for=1.2.3.4;;host=x"), Some(vec![s("1.2.3.4")]));
        for bad in [
            "for=",
            "for",
            "=1.2.3.4",
            "for=1.2.3.4;for=5.6.7.8",
            "for=\"unterminated",
            "for=1.2.3.4 junk",
            "for=[::1]",
            "for=a/b",
            ", ,",
        ] {
            assert_eq!(fors(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn one_chain_is_written_from_the_other() {
        let nodes = forwarded_for_values(
            b"for=\"192.0.2.43:80\", for=\"[2001:db8::1]:4711\", for=unknown, proto=http, for=_x, for=\"a b\"",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(xff_from_nodes(&nodes)).unwrap(),
            "192.0.2.43, 2001:db8::1, unknown, unknown, _x, unknown"
        );
        assert_eq!(
            String::from_utf8(forwarded_from_xff(
                b"203.0.113.9, 2001:db8::1,, 192.0.2.1:80, unknown, not an ip"
            ))
            .unwrap(),
            "for=203.0.113.9, for=\"[2001:db8::1]\", for=\"192.0.2.1:80\", for=unknown, for=unknown"
        );
    }
}
