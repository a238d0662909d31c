//! HTTP answers: JSON errors, small HTML error pages, redirects; never cached.
//!
//! Error bodies carry a stable machine code (`error`) and a sentence for people (`message`);
//! neither ever includes a request value such as a code or state.

use lambda_http::{
    Body, Request, Response,
    http::{
        StatusCode,
        header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE},
    },
};
use serde_json::json;

/// Whether the client's `Accept` header ranks `application/json` above `text/html`.
pub fn prefers_json(request: &Request) -> bool {
    let Some(accept) = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut json_q: f32 = 0.0;
    let mut html_q: f32 = 0.0;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/json" => json_q = json_q.max(q),
            "text/html" => html_q = html_q.max(q),
            _ => {}
        }
    }
    json_q > 0.0 && json_q > html_q
}

/// Every answer: never cached, and no `Referer` leaves a page whose URL may hold a code.
fn builder(status: StatusCode) -> lambda_http::http::response::Builder {
    Response::builder()
        .status(status)
        .header(CACHE_CONTROL, "no-store")
        .header("referrer-policy", "no-referrer")
}

pub fn json(status: StatusCode, body: serde_json::Value, cookie: Option<String>) -> Response<Body> {
    let mut response = builder(status).header(CONTENT_TYPE, "application/json");
    if let Some(cookie) = cookie {
        response = response.header(SET_COOKIE, cookie);
    }
    response
        .body(Body::from(body.to_string()))
        .expect("static headers are valid")
}

pub fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, json!({"error": code, "message": message}), None)
}

/// An error as JSON or as a small HTML page, whichever the client prefers.
pub fn error_for(
    request: &Request,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<Body> {
    if prefers_json(request) {
        return json_error(status, code, message);
    }
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Calendar connection failed</title></head>\
         <body><h1>Calendar connection failed</h1><p>{}</p><p><code>{}</code></p></body></html>",
        html_escape(message),
        html_escape(code)
    );
    builder(status)
        .header(CONTENT_TYPE, "text/html; charset=utf-8")
        .header("x-content-type-options", "nosniff")
        .header("content-security-policy", "default-src 'none'")
        .body(Body::from(page))
        .expect("static headers are valid")
}

pub fn redirect(location: &str, cookie: Option<String>) -> Response<Body> {
    let mut response = builder(StatusCode::FOUND).header(LOCATION, location);
    if let Some(cookie) = cookie {
        response = response.header(SET_COOKIE, cookie);
    }
    response.body(Body::Empty).expect("location is a valid URL")
}

/// `303 See Other`: the answer to a form POST, so the browser follows with a GET.
pub fn see_other(location: &str, cookie: Option<String>) -> Response<Body> {
    let mut response = builder(StatusCode::SEE_OTHER).header(LOCATION, location);
    if let Some(cookie) = cookie {
        response = response.header(SET_COOKIE, cookie);
    }
    response.body(Body::Empty).expect("location is a valid URL")
}

pub fn no_content() -> Response<Body> {
    builder(StatusCode::NO_CONTENT)
        .body(Body::Empty)
        .expect("static headers are valid")
}

pub fn unauthorized() -> Response<Body> {
    json_error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this route needs a signed-in app user (an API Gateway authorizer identity)",
    )
}

pub fn internal(message: &str) -> Response<Body> {
    json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_accept(accept: &str) -> Request {
        lambda_http::http::Request::builder()
            .header(ACCEPT, accept)
            .body(Body::Empty)
            .unwrap()
    }

    #[test]
    fn accept_negotiation() {
        assert!(prefers_json(&with_accept("application/json")));
        assert!(prefers_json(&with_accept(
            "application/json, text/plain, */*"
        )));
        assert!(prefers_json(&with_accept(
            "text/html;q=0.5, application/json"
        )));
        assert!(!prefers_json(&with_accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!prefers_json(&with_accept("*/*")));
        assert!(!prefers_json(&with_accept("application/json;q=0")));
        assert!(!prefers_json(&with_accept("text/html, application/json")));
        assert!(!prefers_json(
            &lambda_http::http::Request::builder()
                .body(Body::Empty)
                .unwrap()
        ));
    }

    #[test]
    fn error_pages_are_escaped_and_locked_down() {
        let page = error_for(
            &with_accept("text/html"),
            StatusCode::BAD_REQUEST,
            "invalid_state",
            "<script>x</script>",
        );
        assert_eq!(page.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            page.headers()["content-security-policy"],
            "default-src 'none'"
        );
        assert_eq!(page.headers()["referrer-policy"], "no-referrer");
        assert_eq!(page.headers()["cache-control"], "no-store");
        let Body::Text(html) = page.body() else {
            panic!("text")
        };
        assert!(html.contains("&lt;script&gt;") && !html.contains("<script>"));
        let json = error_for(
            &with_accept("application/json"),
            StatusCode::BAD_REQUEST,
            "invalid_state",
            "m",
        );
        assert_eq!(json.headers()["content-type"], "application/json");
        let Body::Text(body) = json.body() else {
            panic!("text")
        };
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body, json!({"error": "invalid_state", "message": "m"}));
    }
}
