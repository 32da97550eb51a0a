//! Rate limits (tower-governor): per client address and per token subject, one set of buckets per route
//! group, so a flood on one never starves another — above all, never Twilio's callbacks and media.
//!
//! Refusals are 429 with `Retry-After`. The client address is the TCP peer, or — only with
//! `TRUST_FORWARDED_FOR`, behind a proxy that sets it — `X-Forwarded-For`/`Forwarded`: trusting those
//! headers without such a proxy would let every request pick its own address.

use crate::auth::Claims;
use crate::config::AccessConfig;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use governor::middleware::NoOpMiddleware;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::{KeyExtractor, SmartIpKeyExtractor};
use tower_governor::{GovernorError, GovernorLayer};

/// The client's address.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp {
    trust_forwarded_for: bool,
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        if self.trust_forwarded_for {
            return SmartIpKeyExtractor.extract(req);
        }
        // Without connection info (a router driven directly, in tests) every request shares one bucket.
        Ok(req.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()))
    }
}

/// The token's subject, set by the auth guard that runs before this limiter. Requests with no token
/// (only with `MCP_AUTH=none`) share one bucket.
#[derive(Debug, Clone, Copy)]
pub struct Subject;

impl KeyExtractor for Subject {
    type Key = String;

    fn extract<T>(&self, req: &Request<T>) -> Result<String, GovernorError> {
        Ok(req.extensions().get::<Claims>().map(|c| c.sub.clone()).unwrap_or_default())
    }
}

type Config<K> = Arc<GovernorConfig<K, NoOpMiddleware>>;

/// Every bucket set, made once from the configuration and shared by all connections.
#[derive(Debug, Clone)]
pub struct Limits {
    mcp_ip: Config<ClientIp>,
    mcp_subject: Config<Subject>,
    events_ip: Config<ClientIp>,
    events_subject: Config<Subject>,
    twilio_ip: Config<ClientIp>,
    other_ip: Config<ClientIp>,
}

/// `per_minute` requests a minute, all of them allowed in a burst.
fn per_minute<K: KeyExtractor>(per_minute: u32, key: K) -> Config<K> {
    let per_minute = per_minute.max(1);
    let period_ms = (60_000 / u64::from(per_minute)).max(1);
    let config = GovernorConfigBuilder::default()
        .per_millisecond(period_ms)
        .burst_size(per_minute)
        .key_extractor(key)
        .finish()
        // `finish` refuses only a zero period or burst, and both are at least 1 here.
        .unwrap_or_else(|| unreachable!("a rate of at least one per minute is valid"));
    Arc::new(config)
}

/// The route groups, each with its own buckets.
#[derive(Debug, Clone, Copy)]
pub enum Group {
    Mcp,
    Events,
    Twilio,
    Other,
}

impl Limits {
    pub fn new(access: &AccessConfig) -> Self {
        let ip = ClientIp { trust_forwarded_for: access.trust_forwarded_for };
        Self {
            mcp_ip: per_minute(access.mcp_per_minute, ip),
            mcp_subject: per_minute(access.mcp_per_minute, Subject),
            events_ip: per_minute(access.events_per_minute, ip),
            events_subject: per_minute(access.events_per_minute, Subject),
            twilio_ip: per_minute(access.twilio_per_minute, ip),
            other_ip: per_minute(access.mcp_per_minute, ip),
        }
    }

    /// The per-address limit of a route group (goes outside the auth guard).
    pub fn by_address(&self, group: Group) -> GovernorLayer<ClientIp, NoOpMiddleware, Body> {
        let config = match group {
            Group::Mcp => &self.mcp_ip,
            Group::Events => &self.events_ip,
            Group::Twilio => &self.twilio_ip,
            Group::Other => &self.other_ip,
        };
        GovernorLayer::new(config.clone()).error_handler(too_many)
    }

    /// The per-subject limit of a route group (goes inside the auth guard, which sets the subject).
    pub fn by_subject(&self, group: Group) -> GovernorLayer<Subject, NoOpMiddleware, Body> {
        let config = match group {
            Group::Events => &self.events_subject,
            Group::Mcp | Group::Twilio | Group::Other => &self.mcp_subject,
        };
        GovernorLayer::new(config.clone()).error_handler(too_many)
    }

    /// Forgets buckets that are full again, so memory follows the clients of the last minutes.
    pub fn forget_idle(&self) {
        self.mcp_ip.limiter().retain_recent();
        self.mcp_subject.limiter().retain_recent();
        self.events_ip.limiter().retain_recent();
        self.events_subject.limiter().retain_recent();
        self.twilio_ip.limiter().retain_recent();
        self.other_ip.limiter().retain_recent();
    }

    /// How often [`Limits::forget_idle`] runs.
    pub const FORGET_EVERY: Duration = Duration::from_secs(60);
}

/// 429 with `Retry-After` (whole seconds, at least 1) and a sentence saying so.
fn too_many(error: GovernorError) -> Response<Body> {
    let (status, wait, message) = match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            let wait = wait_time.max(1);
            (StatusCode::TOO_MANY_REQUESTS, wait, format!("too many requests; retry in {wait} s\n"))
        }
        GovernorError::UnableToExtractKey => {
            (StatusCode::INTERNAL_SERVER_ERROR, 1, "the client address could not be determined\n".to_owned())
        }
        GovernorError::Other { code, msg, .. } => (code, 1, msg.unwrap_or_default()),
    };
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    if status == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
    }
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
