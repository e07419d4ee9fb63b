//! The response headers every HTTP answer of the platform carries, whatever route it came
//! from: no content sniffing, no framing, no referrer, and a content security policy that lets
//! an API answer load nothing (pages served later set their own, stricter per page).

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::Response;

/// The headers and their values.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
    ("cross-origin-resource-policy", "same-origin"),
];

/// `axum::middleware::map_response(security_headers)`: sets each header unless the handler
/// set it.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        let name = HeaderName::from_static(name);
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
