//! `GET /dashboard`: a page, served by the binary itself, where an operator watches calls live.
//!
//! Why it exists: `/events` is a feed for programs, and an operator who runs this server — or a developer
//! trying it in sandbox mode — wants to see calls as they happen (number, status, duration, both sides'
//! words, errors) without writing a client first. So the server carries one: `dashboard.html`, a single
//! self-contained file (HTML, CSS and JavaScript inline, no build step, nothing loaded from anywhere
//! else) compiled in with `include_str!`, so it works offline and wherever the binary runs.
//!
//! The page holds no secret and needs no authentication to load. The operator pastes a token with
//! `events:read` (kept in the tab's sessionStorage, never in the URL bar), and the page follows
//! `/events` on its own origin with EventSource, the token in `access_token` — the only way EventSource
//! can send one. When the feed refuses the token (it expired), the page asks for a new one and resumes
//! with `lastEventId`, dropping any event id it has already shown.
//!
//! It is served with a strict Content-Security-Policy: nothing may load or run but the page's own inline
//! script and style, allowed by their SHA-256 hashes (computed once from the file, so editing the page
//! cannot leave a stale hash behind), and it may connect only to its own origin. Event text is only
//! ever inserted with `textContent`, so a transcript cannot inject markup — and if it somehow did, no
//! injected script could run.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// The page, exactly as served.
pub const PAGE: &str = include_str!("dashboard.html");

/// The Content-Security-Policy sent with [`PAGE`].
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| policy(PAGE));

/// The dashboard's route. Stateless, so it fits any router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/dashboard", get(page))
}

async fn page() -> impl IntoResponse {
    let csp = HeaderValue::from_str(&CONTENT_SECURITY_POLICY).unwrap_or(HeaderValue::from_static("default-src 'none'"));
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8")),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // For browsers that predate `frame-ancestors`.
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
        ],
        PAGE,
    )
}

/// Only the page's own inline `<script>` and `<style>` (by hash), connections to its own origin, and no
/// framing, forms, base URL or anything else.
fn policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'",
        hash_source(inline(page, "script")),
        hash_source(inline(page, "style")),
    )
}

/// The content of the page's one `<tag>` element, byte for byte as a browser hashes it.
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let Some(start) = page.find(&open).map(|i| i + open.len()) else { return "" };
    page[start..].find(&close).map_or("", |len| &page[start..start + len])
}

/// A CSP hash source, `'sha256-<base64>'`.
fn hash_source(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest.as_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_sources_are_what_browsers_compute() {
        // `echo -n 'alert(1)' | openssl dgst -sha256 -binary | base64`
        assert_eq!(hash_source("alert(1)"), "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='");
    }

    #[test]
    fn the_page_has_one_inline_script_and_style_and_nothing_else_executable() {
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script, hashed by the policy");
        assert_eq!(PAGE.matches("<style").count(), 1, "one inline style, hashed by the policy");
        assert!(!inline(PAGE, "script").is_empty() && !inline(PAGE, "style").is_empty());
        // Inline handlers and style attributes would need 'unsafe-inline' or 'unsafe-hashes'.
        for bad in [
            " style=",
            " onclick=",
            " onload=",
            " onerror=",
            " onsubmit=",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!PAGE.contains(bad), "the page contains {bad:?}");
        }
        let csp = &*CONTENT_SECURITY_POLICY;
        assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
    }
}
