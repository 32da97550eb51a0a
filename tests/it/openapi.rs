//! `openapi.yaml` names every route the server has, and nothing else: the routes read from the source
//! (each `.route(…)` and `.nest_service(…)` in `src/`, outside test code and the simulators in
//! `src/sandbox/`, which are other servers) are exactly the spec's `paths`, with the same methods, but
//! for `/mcp`, which the MCP specification describes. And each documented path and method is served.
//! `.ci/schema/run.sh` checks that what each route answers is what the spec says.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The one route the spec leaves to another specification (its `info.description` says so).
const MCP: &str = "/mcp";
const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch", "trace"];

type Routes = BTreeMap<String, BTreeSet<String>>;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spec() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("openapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).expect("openapi.yaml is YAML")
}

/// The spec's paths, each with its documented methods.
fn spec_routes(spec: &serde_json::Value) -> Routes {
    let paths = spec["paths"].as_object().expect("openapi.yaml has paths");
    paths
        .iter()
        .map(|(path, item)| {
            let methods = item.as_object().unwrap().keys().filter(|k| METHODS.contains(&k.as_str())).cloned();
            (path.clone(), methods.collect())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Where the code starting at `from` ends: after the `close` matching its first `open` (`{}` for an
/// item, `()` for a call's arguments), or after a `;` met before any `open` (an item with no body).
/// Skips comments and string and character literals, so delimiters inside them do not count.
fn end_of(src: &[u8], from: usize, open: u8, close: u8) -> usize {
    let (mut i, mut depth) = (from, 0usize);
    while i < src.len() {
        match src[i] {
            b'/' if src.get(i + 1) == Some(&b'/') => {
                while i < src.len() && src[i] != b'\n' {
                    i += 1;
                }
            }
            b'r' if matches!(src.get(i + 1), Some(b'"' | b'#')) && (i == 0 || !src[i - 1].is_ascii_alphanumeric()) => {
                let hashes = src[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                let open = i + 2 + hashes;
                i = open + src[open..].windows(close.len()).position(|w| w == close).unwrap_or(0) + close.len() - 1;
            }
            b'"' => {
                i += 1;
                while i < src.len() && src[i] != b'"' {
                    i += if src[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A character literal ('{', '\''); a lifetime ('a) has no closing quote two or three bytes on.
            b'\'' if src.get(i + 2) == Some(&b'\'') => i += 2,
            b'\'' if src.get(i + 1) == Some(&b'\\') && src.get(i + 3) == Some(&b'\'') => i += 3,
            b';' if depth == 0 => return i + 1,
            c if c == open => depth += 1,
            c if c == close => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    src.len()
}

/// The file's code outside `#[cfg(test)]` items, and the files of `#[cfg(test)] mod name;` declarations.
fn production_code(path: &Path, text: &str, test_files: &mut BTreeSet<PathBuf>) -> String {
    const MARK: &str = "#[cfg(test)]";
    let (mut code, mut rest) = (String::new(), text);
    while let Some(at) = rest.find(MARK) {
        code.push_str(&rest[..at]);
        let item = &rest[at + MARK.len()..];
        let end = end_of(item.as_bytes(), 0, b'{', b'}');
        let declared = item[..end].trim();
        if let Some(name) = declared.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
            // `mod x;` in `a/mod.rs` (or lib.rs) is `a/x.rs`; in `a/b.rs` it is `a/b/x.rs`.
            let dir = path.parent().unwrap();
            let stem = path.file_stem().unwrap().to_str().unwrap();
            let base = if matches!(stem, "mod" | "lib" | "main") { dir.to_owned() } else { dir.join(stem) };
            test_files.insert(base.join(format!("{}.rs", name.trim())));
            test_files.insert(base.join(name.trim()).join("mod.rs"));
        }
        rest = &item[end..];
    }
    code.push_str(rest);
    code
}

/// A `&str` constant defined in `code`: `const NAME: &str = "…";`.
fn constant(code: &str, name: &str) -> Option<String> {
    let at = code.find(&format!("const {name}: &str = \""))?;
    let value = &code[at..].split_once('"')?.1;
    Some(value.split_once('"')?.0.to_owned())
}

/// Every route registered in `src/` outside the simulators and test code, with its methods
/// (`get(…)`, `post(…)`, … in the route's arguments; `*` for a nested service, which takes any).
fn source_routes() -> Routes {
    let src = repo().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.starts_with(src.join("sandbox")));
    let mut test_files = BTreeSet::new();
    let code: Vec<(PathBuf, String)> = files
        .iter()
        .map(|f| (f.clone(), production_code(f, &std::fs::read_to_string(f).unwrap(), &mut test_files)))
        .collect();
    let mut routes = Routes::new();
    for (file, code) in code.iter().filter(|(f, _)| !test_files.contains(f)) {
        for call in [".route(", ".nest_service("] {
            for (at, _) in code.match_indices(call) {
                let args = &code[at + call.len() - 1..];
                let args = &args[1..end_of(args.as_bytes(), 0, b'(', b')') - 1];
                let args = args.trim_start();
                let (path, after) = if let Some(literal) = args.strip_prefix('"') {
                    let (path, after) = literal.split_once('"').unwrap();
                    (path.to_owned(), after)
                } else {
                    let end = args.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap();
                    let name = args[..end].rsplit("::").next().unwrap();
                    let path = constant(code, name).unwrap_or_else(|| {
                        panic!("{}: route path `{name}` is neither a literal nor a const in the file", file.display())
                    });
                    (path, &args[end..])
                };
                let methods = routes.entry(path).or_default();
                if call == ".nest_service(" {
                    methods.insert("*".to_owned());
                    continue;
                }
                // `get(handler)`, `routing::post(h)`, `get(a).post(b)`: the method routers in its arguments.
                for method in METHODS {
                    let called = after
                        .match_indices(&format!("{method}("))
                        .any(|(i, _)| !after[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'));
                    if called {
                        methods.insert((*method).to_owned());
                    }
                }
            }
        }
    }
    routes
}

#[test]
fn every_route_is_in_the_spec_and_every_spec_path_is_a_route() {
    let spec = spec();
    let documented = spec_routes(&spec);
    let mut served = source_routes();
    // The scan itself works: it finds routes from app.rs, a router module, and a path held in a const.
    for known in [MCP, "/healthz", "/events", "/.well-known/oauth-protected-resource/mcp"] {
        assert!(served.contains_key(known), "the source scan missed {known}: {served:?}");
    }
    assert_eq!(served.remove(MCP).unwrap(), BTreeSet::from(["*".to_owned()]), "/mcp is one nested service");
    assert!(!documented.contains_key(MCP), "/mcp is described by the MCP specification, not openapi.yaml");
    let description = spec["info"]["description"].as_str().unwrap_or_default();
    assert!(description.contains("MCP endpoint"), "info.description should say where /mcp is described");

    let undocumented: Vec<_> = served.keys().filter(|p| !documented.contains_key(*p)).collect();
    assert!(undocumented.is_empty(), "routes the server has but openapi.yaml does not describe: {undocumented:?}");
    let unserved: Vec<_> = documented.keys().filter(|p| !served.contains_key(*p)).collect();
    assert!(unserved.is_empty(), "paths openapi.yaml describes but no route in src/ serves: {unserved:?}");
    for (path, methods) in &served {
        assert!(!methods.is_empty(), "{path}: no method router (get(…), post(…)) found in its .route(…)");
        assert_eq!(methods, &documented[path], "{path}: the server's methods (left) are not the spec's (right)");
    }
}

#[tokio::test]
async fn every_documented_path_and_method_is_served() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let documented = spec_routes(&spec());
    assert!(!documented.is_empty());
    for (path, methods) in &documented {
        for method in methods {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // No token, signature or upgrade: 401, 403 or 400 say the route is there; 404 and 405 that it is not.
            let response = http.request(method.clone(), format!("{}{path}", server.base)).send().await.unwrap();
            let status = response.status().as_u16();
            assert!(status != 404 && status != 405, "{method} {path}: {status}, but openapi.yaml documents it");
        }
    }
    server.stop().await;
}
