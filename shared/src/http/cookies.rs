//! The browser-binding cookie `__Host-calsync_oauth`.
//!
//! It carries the flow's nonce from start to callback in the browser that started the connect.
//! `__Host-` makes browsers insist on `Secure`, `Path=/` and no `Domain`, so no sibling subdomain
//! can plant it. `SameSite=Lax` lets it ride the top-level redirect back from Google (a cross-site
//! navigation) but not cross-site subrequests. `Max-Age` matches the flow's ten minutes.

use lambda_http::{Request, http::header::COOKIE};

pub const NAME: &str = "__Host-calsync_oauth";
const ATTRIBUTES: &str = "HttpOnly; Secure; SameSite=Lax; Path=/";

/// The `Set-Cookie` value that hands the nonce to the browser.
pub fn set(nonce: &str) -> String {
    format!("{NAME}={nonce}; {ATTRIBUTES}; Max-Age=600")
}

/// The `Set-Cookie` value that removes it (same attributes, so the browser matches it).
pub fn clear() -> String {
    format!("{NAME}=; {ATTRIBUTES}; Max-Age=0")
}

/// The nonce from the request's `Cookie` header(s) (lambda_http joins API Gateway v2's `cookies`
/// array into one header). `None` when absent or empty; with duplicates, the first one.
pub fn read(request: &Request) -> Option<String> {
    request
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == NAME)
        .map(|(_, value)| value.trim().to_string())
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_cookie_has_every_attribute() {
        let value = set("NONCE");
        let parts: Vec<&str> = value.split("; ").collect();
        assert_eq!(parts[0], "__Host-calsync_oauth=NONCE");
        for attribute in [
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=600",
        ] {
            assert!(parts.contains(&attribute), "{attribute} missing in {value}");
        }
        assert!(!value.to_ascii_lowercase().contains("domain="));
        assert!(NAME.starts_with("__Host-"));
    }

    #[test]
    fn clearing_keeps_the_attributes_and_expires_now() {
        let value = clear();
        let parts: Vec<&str> = value.split("; ").collect();
        assert_eq!(parts[0], "__Host-calsync_oauth=");
        for attribute in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=0"] {
            assert!(parts.contains(&attribute), "{attribute} missing in {value}");
        }
    }

    fn event_with_cookies(cookies: serde_json::Value) -> Request {
        let event = serde_json::json!({
            "version": "2.0",
            "routeKey": "GET /oauth/google/callback",
            "rawPath": "/oauth/google/callback",
            "rawQueryString": "",
            "cookies": cookies,
            "headers": {"host": "api.example"},
            "requestContext": {
                "accountId": "1", "apiId": "a", "domainName": "api.example", "domainPrefix": "api",
                "http": {"method": "GET", "path": "/oauth/google/callback", "protocol": "HTTP/1.1",
                         "sourceIp": "127.0.0.1", "userAgent": "t"},
                "requestId": "r", "routeKey": "GET /oauth/google/callback", "stage": "$default",
                "time": "25/Nov/2026:21:00:00 +0000", "timeEpoch": 1795000000000u64
            },
            "isBase64Encoded": false
        });
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    #[test]
    fn api_gateway_v2_cookies_array_is_read() {
        let request = event_with_cookies(serde_json::json!([
            "theme=dark",
            "__Host-calsync_oauth=abc_DEF-123",
            "other=1"
        ]));
        assert_eq!(read(&request).as_deref(), Some("abc_DEF-123"));
        let none = event_with_cookies(serde_json::json!(["theme=dark"]));
        assert_eq!(read(&none), None);
        let empty = event_with_cookies(serde_json::json!(["__Host-calsync_oauth="]));
        assert_eq!(read(&empty), None);
        let lookalike = event_with_cookies(serde_json::json!(["x__Host-calsync_oauth=evil"]));
        assert_eq!(read(&lookalike), None);
    }
}
