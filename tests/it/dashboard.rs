//! `GET /dashboard`: the page is served, with its security headers, and loads nothing from elsewhere.

use crate::support::*;
use base64::Engine;
use sha2::{Digest, Sha256};

/// The content of the page's one `<tag>` element.
fn inline<'a>(page: &'a str, tag: &str) -> &'a str {
    let start = page.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
    let len = page[start..].find(&format!("</{tag}>")).unwrap();
    &page[start..start + len]
}

fn sha256_source(content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    format!("'sha256-{}'", base64::engine::general_purpose::STANDARD.encode(digest.as_slice()))
}

#[tokio::test]
async fn the_dashboard_is_one_self_contained_page_under_a_strict_policy() {
    let server = TestServer::start().await;
    // No token needed to load it: the page holds no secret, the feed it opens does the checking.
    let response = reqwest::get(format!("{}/dashboard", server.base)).await.unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response.headers().get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap().to_owned()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("cache-control"), "no-store");
    let csp = header("content-security-policy");
    let page = response.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>"), "{}", &page[..40]);

    let directives: Vec<&str> = csp.split(';').map(str::trim).collect();
    let script = format!("script-src {}", sha256_source(inline(&page, "script")));
    let style = format!("style-src {}", sha256_source(inline(&page, "style")));
    for want in ["default-src 'none'", "connect-src 'self'", "frame-ancestors 'none'", &script, &style] {
        assert!(directives.contains(&want), "CSP lacks {want:?}: {csp}");
    }
    assert!(!csp.contains("unsafe") && !csp.contains('*') && !csp.contains("http"), "{csp}");

    // Nothing from another origin: no URL, no protocol-relative reference, no resource attribute.
    let lower = page.to_ascii_lowercase();
    for external in ["http:", "https:", "ws:", "wss:", "ftp:", "src=", "href=", "srcset", "action=", "@import"] {
        assert!(!lower.contains(external), "the page references {external:?}");
    }
    assert!(!inline(&lower, "style").contains("url("), "the stylesheet loads something");
    // The feed is opened on the page's own origin, with the token in the query EventSource allows.
    assert!(page.contains("new URL(\"events\", location.href)") && page.contains("\"access_token\""));
    assert!(page.contains("sessionStorage") && !page.contains("localStorage"));
    server.stop().await;
}

#[tokio::test]
async fn only_the_page_itself_is_served() {
    let server = TestServer::start().await;
    let client = reqwest::Client::new();
    for path in ["/dashboard/", "/dashboard/events", "/dashboard.html"] {
        let status = client.get(format!("{}{path}", server.base)).send().await.unwrap().status();
        assert_eq!(status, 404, "{path}");
    }
    let post = client.post(format!("{}/dashboard", server.base)).send().await.unwrap().status();
    assert_eq!(post, 405);
    server.stop().await;
}
