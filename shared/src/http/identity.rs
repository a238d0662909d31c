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
