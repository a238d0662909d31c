//! Who is calling: the app user id from the API Gateway authorizer context.
//!
//! API Gateway has already verified the caller; calsync trusts only these two places:
//! `requestContext.authorizer.jwt.claims.sub` (HTTP API JWT authorizer) and
//! `requestContext.authorizer.lambda.user_id` (Lambda authorizer, a string or a number).

use lambda_http::{Request, RequestExt, request::RequestContext};

/// The app user's id, or `None` when the request carries no usable authorizer identity.
pub fn user_id(request: &Request) -> Option<String> {
    let Some(RequestContext::ApiGatewayV2(context)) = request.request_context_ref() else {
        return None;
    };
    let authorizer = context.authorizer.as_ref()?;
    let from_jwt = authorizer
        .jwt
        .as_ref()
        .and_then(|jwt| jwt.claims.get("sub"))
        .cloned();
    let from_lambda = || match authorizer.fields.get("user_id") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    from_jwt
        .or_else(from_lambda)
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty() && id.len() <= 512 && !id.chars().any(char::is_control))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn request(authorizer: Option<Value>) -> Request {
        let mut context = json!({
            "accountId": "1", "apiId": "a", "domainName": "api.example", "domainPrefix": "api",
            "http": {"method": "GET", "path": "/oauth/google/status", "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "t"},
            "requestId": "r", "routeKey": "GET /oauth/google/status", "stage": "$default",
            "time": "25/Nov/2026:21:00:00 +0000", "timeEpoch": 1795000000000u64
        });
        if let Some(authorizer) = authorizer {
            context["authorizer"] = authorizer;
        }
        let event = json!({
            "version": "2.0", "routeKey": "GET /oauth/google/status",
            "rawPath": "/oauth/google/status", "rawQueryString": "",
            "headers": {"host": "api.example"}, "requestContext": context, "isBase64Encoded": false
        });
        lambda_http::request::from_str(&event.to_string()).unwrap()
    }

    #[test]
    fn jwt_sub_and_lambda_user_id_are_read() {
        let jwt = request(Some(
            json!({"jwt": {"claims": {"sub": "user-1"}, "scopes": null}}),
        ));
        assert_eq!(user_id(&jwt).as_deref(), Some("user-1"));
        let lambda = request(Some(json!({"lambda": {"user_id": "user-2"}})));
        assert_eq!(user_id(&lambda).as_deref(), Some("user-2"));
        let numeric = request(Some(json!({"lambda": {"user_id": 42}})));
        assert_eq!(user_id(&numeric).as_deref(), Some("42"));
    }

    #[test]
    fn no_usable_identity_is_none() {
        assert_eq!(user_id(&request(None)), None);
        assert_eq!(
            user_id(&request(Some(
                json!({"jwt": {"claims": {"email": "x@y"}, "scopes": null}})
            ))),
            None
        );
        assert_eq!(
            user_id(&request(Some(json!({"lambda": {"user_id": ""}})))),
            None
        );
        assert_eq!(
            user_id(&request(Some(json!({"lambda": {"user_id": true}})))),
            None
        );
        // A plain http::Request (no API Gateway context) has no identity either.
        let bare = lambda_http::http::Request::builder()
            .body(lambda_http::Body::Empty)
            .unwrap();
        assert_eq!(user_id(&bare), None);
    }
}
