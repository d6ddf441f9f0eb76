//! The loopback guard: every address the tool would send traffic to
//! (targets, publish URL, Redis nodes, source addresses) passes through here;
//! anything off loopback is refused unless `--allow-remote` was given on the
//! command line. Host names other than `localhost` are refused unresolved.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

use serde::{Deserialize, Serialize};

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    /// The text is not a URL or address of the expected shape.
    Malformed {
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The address is not on loopback and `--allow-remote` was not given.
    NotLoopback {
        /// What was given.
        value: String,
    },
    /// A remote host name did not resolve.
    Unresolved {
        /// What was given.
        value: String,
    },
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::Malformed { value, reason } => write!(f, "`{value}`: {reason}"),
            AddrError::NotLoopback { value } => write!(
                f,
                "`{value}` is not a loopback address (127.0.0.0/8, ::1, localhost); \
                 pass --allow-remote to load a remote host you are responsible for"
            ),
            AddrError::Unresolved { value } => write!(f, "`{value}` does not resolve"),
        }
    }
}

impl std::error::Error for AddrError {}

/// A gateway WebSocket endpoint, resolved once at plan time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The URL as used in the upgrade request, e.g. `ws://127.0.0.1:8080/ws`.
    pub url: String,
    /// The socket address to connect to.
    pub addr: SocketAddr,
}

/// An HTTP base URL (scheme http) resolved to an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpBase {
    /// `host:port` as sent in the `Host` header.
    pub authority: String,
    /// The socket address to connect to.
    pub addr: SocketAddr,
}

/// Whether `ip` is a loopback address (127.0.0.0/8 or ::1).
pub fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Resolves `host` and `port`, allowing only loopback unless `allow_remote`.
pub fn resolve(
    host: &str,
    port: u16,
    allow_remote: bool,
    shown: &str,
) -> Result<SocketAddr, AddrError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(ip) = bare.parse::<IpAddr>() {
        if !allow_remote && !is_loopback_ip(ip) {
            return Err(AddrError::NotLoopback {
                value: shown.to_owned(),
            });
        }
        return Ok(SocketAddr::new(ip, port));
    }
    if !allow_remote {
        return Err(AddrError::NotLoopback {
            value: shown.to_owned(),
        });
    }
    (bare, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| AddrError::Unresolved {
            value: shown.to_owned(),
        })
}

/// Splits `scheme://authority/rest` into its parts.
fn split_url(value: &str) -> Result<(String, String, String), AddrError> {
    let malformed = |reason: &str| AddrError::Malformed {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let (scheme, rest) = value
        .split_once("://")
        .ok_or_else(|| malformed("expected scheme://host:port/path"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(malformed("expected a host (and no user info)"));
    }
    Ok((
        scheme.to_ascii_lowercase(),
        authority.to_owned(),
        path.to_owned(),
    ))
}

/// Splits `host:port` (IPv6 in brackets) with a default port.
fn split_host_port(
    authority: &str,
    default_port: u16,
    value: &str,
) -> Result<(String, u16), AddrError> {
    let malformed = |reason: &str| AddrError::Malformed {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| malformed("unclosed `[` in IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| malformed("bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(malformed("junk after IPv6 address")),
        };
        return Ok((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Ok((
            host.to_owned(),
            port.parse().map_err(|_| malformed("bad port"))?,
        )),
        Some(_) => Err(malformed("IPv6 addresses need brackets: [::1]:8080")),
        None => Ok((authority.to_owned(), default_port)),
    }
}

/// Parses a gateway target: `ws://host:port/ws`, or `host:port` (path `/ws`).
///
/// `wss://` is refused: the tool carries no TLS stack, and loopback runs do not
/// need one.
pub fn parse_target(value: &str, allow_remote: bool) -> Result<Target, AddrError> {
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("ws://{value}")
    };
    let (scheme, authority, mut path) = split_url(&with_scheme)?;
    if scheme != "ws" {
        return Err(AddrError::Malformed {
            value: value.to_owned(),
            reason: format!("scheme `{scheme}` is not supported (use ws://)"),
        });
    }
    let (host, port) = split_host_port(&authority, 80, value)?;
    let addr = resolve(&host, port, allow_remote, value)?;
    if path.is_empty() || path == "/" {
        path = "/ws".to_owned();
    }
    Ok(Target {
        url: format!("ws://{authority}{path}"),
        addr,
    })
}

/// Parses an HTTP base URL such as `http://127.0.0.1:8080`.
pub fn parse_http_base(value: &str, allow_remote: bool) -> Result<HttpBase, AddrError> {
    let (scheme, authority, _) = split_url(value)?;
    if scheme != "http" {
        return Err(AddrError::Malformed {
            value: value.to_owned(),
            reason: format!("scheme `{scheme}` is not supported (use http://)"),
        });
    }
    let (host, port) = split_host_port(&authority, 80, value)?;
    let addr = resolve(&host, port, allow_remote, value)?;
    Ok(HttpBase { authority, addr })
}

/// Parses a Redis node address `host:port` (default port 6379).
pub fn parse_redis_addr(value: &str, allow_remote: bool) -> Result<SocketAddr, AddrError> {
    let authority = value
        .strip_prefix("redis://")
        .unwrap_or(value)
        .trim_end_matches('/');
    let (host, port) = split_host_port(authority, 6379, value)?;
    resolve(&host, port, allow_remote, value)
}

/// Parses a client source address, which must be loopback unless `allow_remote`.
pub fn parse_source_ip(value: &str, allow_remote: bool) -> Result<IpAddr, AddrError> {
    let ip: IpAddr = value.parse().map_err(|_| AddrError::Malformed {
        value: value.to_owned(),
        reason: "expected an IP address".to_owned(),
    })?;
    if !allow_remote && !is_loopback_ip(ip) {
        return Err(AddrError::NotLoopback {
            value: value.to_owned(),
        });
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_pass_and_get_a_default_path() {
        let t = parse_target("ws://127.0.0.1:8080", false).unwrap();
        assert_eq!(t.url, "ws://127.0.0.1:8080/ws");
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        let t = parse_target("127.0.0.5:9000", false).unwrap();
        assert_eq!(t.url, "ws://127.0.0.5:9000/ws");
        let t = parse_target("ws://localhost:81/custom?x=1", false).unwrap();
        assert_eq!(t.url, "ws://localhost:81/custom?x=1");
        assert_eq!(t.addr, "127.0.0.1:81".parse().unwrap());
        let t = parse_target("ws://[::1]:8080/ws", false).unwrap();
        assert_eq!(t.addr, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn remote_targets_are_refused_without_the_flag() {
        for bad in [
            "ws://10.0.0.5:8080/ws",
            "ws://192.168.1.2:80",
            "ws://example.com/ws",
            "ws://[2001:db8::1]:80",
        ] {
            assert!(
                matches!(parse_target(bad, false), Err(AddrError::NotLoopback { .. })),
                "{bad}"
            );
        }
        assert!(parse_target("ws://10.0.0.5:8080/ws", true).is_ok());
        assert!(matches!(
            parse_redis_addr("10.1.1.1:7000", false),
            Err(AddrError::NotLoopback { .. })
        ));
        assert!(matches!(
            parse_http_base("http://8.8.8.8", false),
            Err(AddrError::NotLoopback { .. })
        ));
        assert!(matches!(
            parse_source_ip("10.0.0.1", false),
            Err(AddrError::NotLoopback { .. })
        ));
    }

    #[test]
    fn malformed_values_are_explained() {
        assert!(matches!(
            parse_target("wss://127.0.0.1/ws", false),
            Err(AddrError::Malformed { .. })
        ));
        assert!(matches!(
            parse_target("ws://127.0.0.1:notaport/ws", false),
            Err(AddrError::Malformed { .. })
        ));
        assert!(matches!(
            parse_target("ws://::1:80/ws", false),
            Err(AddrError::Malformed { .. })
        ));
        assert!(matches!(
            parse_http_base("ftp://127.0.0.1", false),
            Err(AddrError::Malformed { .. })
        ));
        assert_eq!(parse_redis_addr("127.0.0.1", false).unwrap().port(), 6379);
        assert_eq!(
            parse_redis_addr("redis://127.0.0.1:7001", false)
                .unwrap()
                .port(),
            7001
        );
    }
}
