//! Why a request was refused (answered as RFC 6750 `WWW-Authenticate`), and why token checking could
//! not be set up at start.
//!
//! Two types because they reach different people: [`AuthError`] goes to a client over HTTP, so its
//! reasons are short and fixed and never echo the token; [`AuthSetupError`] goes to the operator at
//! start and names the setting to fix.

/// Shown in every `WWW-Authenticate` challenge, so a client can tell which server refused it.
const REALM: &str = "voice-call-mcp";

/// A request's token was missing, unacceptable or not enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("an access token is required")]
    Missing,
    /// The reason is a short fixed phrase chosen by this module, never the token or any of its text.
    #[error("the access token is not valid: {0}")]
    Invalid(String),
    #[error("the access token has expired")]
    Expired,
    #[error("the access token lacks the '{needed}' scope")]
    InsufficientScope { needed: &'static str },
}

impl AuthError {
    /// 401 when the client should (re)authenticate, 403 when it did but may not do this.
    pub fn status(&self) -> u16 {
        match self {
            Self::InsufficientScope { .. } => 403,
            Self::Missing | Self::Invalid(_) | Self::Expired => 401,
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3). `resource_metadata` is the RFC 9728 metadata URL MCP
    /// clients use to discover the authorization server.
    pub fn www_authenticate(&self, resource_metadata: Option<&str>) -> String {
        self.challenge(resource_metadata, None)
    }

    /// As [`AuthError::www_authenticate`], naming the scopes the request needs (`scope`, RFC 6750 §3) so
    /// a client can ask its authorization server for the right ones.
    pub fn challenge(&self, resource_metadata: Option<&str>, scope: Option<&str>) -> String {
        let mut params = vec![("realm", REALM.to_owned())];
        match self {
            // RFC 6750 §3.1: a request with no credentials gets no error code, just the challenge.
            Self::Missing => {}
            Self::Invalid(reason) => {
                params.push(("error", "invalid_token".into()));
                params.push(("error_description", format!("the access token is not valid: {reason}")));
            }
            Self::Expired => {
                params.push(("error", "invalid_token".into()));
                params.push(("error_description", "the access token has expired".into()));
            }
            Self::InsufficientScope { needed } => {
                params.push(("error", "insufficient_scope".into()));
                params.push(("error_description", format!("the '{needed}' scope is required")));
                params.push(("scope", (*needed).to_owned()));
            }
        }
        if let Some(scope) = scope
            && !matches!(self, Self::InsufficientScope { .. })
        {
            params.push(("scope", scope.to_owned()));
        }
        if let Some(url) = resource_metadata {
            params.push(("resource_metadata", url.to_owned()));
        }
        let quoted: Vec<String> = params.iter().map(|(k, v)| format!("{k}=\"{}\"", quotable(v))).collect();
        format!("Bearer {}", quoted.join(", "))
    }
}

/// RFC 6750 limits these values to printable ASCII without `"` and `\`; anything else is replaced, so
/// the header can always be built and a value can never close its quotes early.
fn quotable(value: &str) -> String {
    value.chars().map(|c| if matches!(c, ' '..='~') && c != '"' && c != '\\' { c } else { '?' }).collect()
}

/// Token checking could not be set up, or a token could not be minted. Names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("JWT_ALGORITHM: '{0}' is not an algorithm this server can verify")]
    Algorithm(String),
    #[error("JWT_PUBLIC_KEY_FILE: '{path}' {problem}")]
    KeyFile { path: String, problem: String },
    /// `url` is shown without credentials or query, which may carry secrets.
    #[error("JWT_JWKS_URL: {url}: {problem}")]
    Jwks { url: String, problem: String },
    #[error("JWT_SECRET: {0}")]
    Secret(String),
    #[error("the token could not be signed: {0}")]
    Mint(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(AuthError::Missing.www_authenticate(None), r#"Bearer realm="voice-call-mcp""#);
        assert_eq!(AuthError::Missing.status(), 401);
        let meta = "https://calls.example.com/.well-known/oauth-protected-resource";
        assert_eq!(
            AuthError::Expired.www_authenticate(Some(meta)),
            format!(
                r#"Bearer realm="voice-call-mcp", error="invalid_token", error_description="the access token has expired", resource_metadata="{meta}""#
            )
        );
        let scope = AuthError::InsufficientScope { needed: "events:read" };
        assert_eq!(scope.status(), 403);
        assert_eq!(
            scope.www_authenticate(None),
            r#"Bearer realm="voice-call-mcp", error="insufficient_scope", error_description="the 'events:read' scope is required", scope="events:read""#
        );
    }

    #[test]
    fn a_reason_cannot_break_out_of_its_quotes() {
        let e = AuthError::Invalid("a \"quoted\" \\ reason\r\n".into());
        assert_eq!(e.status(), 401);
        let header = e.www_authenticate(None);
        assert!(header.ends_with(r#"error_description="the access token is not valid: a ?quoted? ? reason??""#));
        assert!(axum::http::HeaderValue::from_str(&header).is_ok());
    }
}
