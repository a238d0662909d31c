//! The HTTP handlers (API Gateway HTTP API v2 events): identity from the authorizer, start, callback, status and disconnect.
//!
//! Until the connect flow lands, every route answers 501 with a JSON error: nothing pretends to work.

use lambda_http::{Body, Error, Request, Response};

/// Placeholder for the routes of the connect flow (issue 3): an honest 501.
pub async fn not_implemented(_request: Request) -> Result<Response<Body>, Error> {
    Ok(Response::builder()
        .status(501)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"error":"not_implemented"}"#))?)
}
