//! API Gateway HTTP API (payload format 2.0) events, typed on `aws_lambda_events`: what the local
//! API Gateway hands a function, and what the tests and the sam check send one. One builder, so
//! every event has the shape Lambda's own type reads.

use aws_lambda_events::apigw::{
    ApiGatewayRequestAuthorizer, ApiGatewayRequestAuthorizerJwtDescription, ApiGatewayV2httpRequest,
};
use aws_lambda_events::http::{HeaderValue, Method, header};
use base64::Engine as _;
use serde_json::Value;

use crate::{aws, seed, stack};

/// One request as API Gateway's HTTP API turns it into an event.
#[derive(Debug, Clone)]
pub struct HttpApiEvent(ApiGatewayV2httpRequest);

impl HttpApiEvent {
    pub fn new(method: Method, path: &str) -> Self {
        let route_key = format!("{method} {path}");
        let mut event = ApiGatewayV2httpRequest::default();
        event.version = Some("2.0".into());
        event.route_key = Some(route_key.clone());
        event.raw_path = Some(path.into());
        event.raw_query_string = Some(String::new());
        let context = &mut event.request_context;
        context.route_key = Some(route_key);
        context.account_id = Some(aws::ACCOUNT_ID.into());
        context.apiid = Some("local".into());
        context.stage = Some("$default".into());
        context.request_id = Some(seed::random_token(16));
        context.time_epoch = now_millis();
        context.http.method = method;
        context.http.path = Some(path.into());
        context.http.protocol = Some("HTTP/1.1".into());
        context.http.source_ip = Some("127.0.0.1".into());
        Self(event).header(header::HOST.as_str(), "api.example.test")
    }

    pub fn get(path: &str) -> Self {
        Self::new(Method::GET, path)
    }

    /// The query string as the browser sent it (`a=1&b=2`), raw and parsed.
    pub fn query(mut self, raw: &str) -> Self {
        self.0.raw_query_string = Some(raw.into());
        self.0.query_string_parameters = raw.parse().unwrap_or_default();
        self
    }

    /// A request header. As API Gateway does, names are lower case, a repeated header is joined
    /// with commas, and `Cookie` becomes the event's `cookies` list.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        let name = name.to_ascii_lowercase();
        if name == header::COOKIE.as_str() {
            return value
                .split(';')
                .fold(self, |event, c| event.cookie(c.trim()));
        }
        if name == header::HOST.as_str() {
            self.0.request_context.domain_name = Some(value.into());
        }
        if name == header::USER_AGENT.as_str() {
            self.0.request_context.http.user_agent = Some(value.into());
        }
        let joined = match self.0.headers.get(&name).and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier},{value}"),
            None => value.to_string(),
        };
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&joined),
        ) {
            self.0.headers.insert(name, value);
        }
        self
    }

    /// One `name=value` cookie the browser sends.
    pub fn cookie(mut self, pair: &str) -> Self {
        self.0
            .cookies
            .get_or_insert_with(Vec::new)
            .push(pair.into());
        self
    }

    /// The signed-in app user, as the JWT authorizer passes its claims (the issuer and audience
    /// are the local stack's `JwtIssuer` and `JwtAudience`).
    pub fn user(self, sub: &str) -> Self {
        self.claims(
            [
                ("sub", sub),
                ("iss", stack::JWT_ISSUER),
                ("aud", stack::JWT_AUDIENCE),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        )
    }

    /// The claims of a verified JWT, as API Gateway's JWT authorizer passes them (strings).
    pub fn claims(mut self, claims: std::collections::HashMap<String, String>) -> Self {
        let mut jwt = ApiGatewayRequestAuthorizerJwtDescription::default();
        jwt.claims = claims;
        let mut authorizer = ApiGatewayRequestAuthorizer::default();
        authorizer.jwt = Some(jwt);
        self.0.request_context.authorizer = Some(authorizer);
        self
    }

    /// The request body: text as is, anything else base64 encoded.
    pub fn body(mut self, body: &[u8]) -> Self {
        if body.is_empty() {
            return self;
        }
        match std::str::from_utf8(body) {
            Ok(text) => self.0.body = Some(text.into()),
            Err(_) => {
                self.0.body = Some(base64::engine::general_purpose::STANDARD.encode(body));
                self.0.is_base64_encoded = true;
            }
        }
        self
    }

    pub fn json(&self) -> Value {
        serde_json::to_value(&self.0).expect("an API Gateway event serialises")
    }

    /// The event as the `lambda_http::Request` a handler receives.
    pub fn request(&self) -> lambda_http::Request {
        lambda_http::request::from_str(&self.json().to_string())
            .expect("lambda_http reads an API Gateway v2 event")
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The `name=value` pair a `Set-Cookie` value sets, without its attributes.
pub fn cookie_pair(set_cookie: &str) -> Option<(&str, &str)> {
    let (name, value) = set_cookie.split(';').next()?.split_once('=')?;
    Some((name.trim(), value.trim()))
}

/// Every `Set-Cookie` of a function's answer: v2 answers carry them in `cookies`, v1-shaped ones
/// in the headers.
pub fn answer_set_cookies(answer: &Value) -> Vec<String> {
    let mut cookies: Vec<String> = answer["cookies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str().map(str::to_string))
        .collect();
    cookies.extend(answer_header(answer, "set-cookie"));
    cookies
}

/// A handler's response as the JSON answer Lambda would return (status, headers, cookies).
pub fn answer_of(response: lambda_http::Response<lambda_http::Body>) -> Value {
    let headers: serde_json::Map<String, Value> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != header::SET_COOKIE)
        .filter_map(|(name, v)| Some((name.to_string(), v.to_str().ok()?.into())))
        .collect();
    let cookies: Vec<&str> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    serde_json::json!({"statusCode": response.status().as_u16(), "headers": headers, "cookies": cookies})
}

/// A header of a function's answer (`headers`, else the first of `multiValueHeaders`), any case.
pub fn answer_header(answer: &Value, name: &str) -> Option<String> {
    let find = |headers: &Value| {
        headers
            .as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let value = find(&answer["headers"])
        .or_else(|| find(&answer["multiValueHeaders"]).map(|v| v[0].clone()))?;
    value.as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_event_carries_query_headers_cookies_and_claims() {
        let event = HttpApiEvent::get("/oauth/google/start")
            .query("return_to=https%3A%2F%2Fx.test%2F&x=1&x=2")
            .header("Cookie", "a=1; b=2")
            .header("Accept", "application/json")
            .user("user-1")
            .json();
        assert_eq!(event["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(event["headers"]["accept"], "application/json");
        assert!(event["headers"].get("cookie").is_none());
        assert_eq!(
            event["queryStringParameters"]["return_to"],
            "https://x.test/"
        );
        assert_eq!(event["queryStringParameters"]["x"], "1,2");
        assert_eq!(event["routeKey"], "GET /oauth/google/start");
        assert_eq!(
            event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"],
            "user-1"
        );
        let request = HttpApiEvent::get("/p").query("a=1").request();
        assert_eq!(request.uri().path(), "/p");
    }

    #[test]
    fn without_a_user_there_is_no_authorizer() {
        let event = HttpApiEvent::get("/oauth/google/callback")
            .query("state=s+1&code=c")
            .cookie("__Host-calsync_oauth=n")
            .json();
        assert_eq!(event["rawQueryString"], "state=s+1&code=c");
        assert_eq!(event["queryStringParameters"]["state"], "s 1");
        assert_eq!(event["cookies"][0], "__Host-calsync_oauth=n");
        assert!(event["requestContext"].get("authorizer").is_none());
    }

    #[test]
    fn set_cookie_is_read_from_v2_cookies_and_from_headers() {
        let v2 = json!({"statusCode": 302, "cookies": ["__Host-a=1; Secure"]});
        assert_eq!(answer_set_cookies(&v2), ["__Host-a=1; Secure"]);
        let v1 = json!({"statusCode": 302, "headers": {"Set-Cookie": "__Host-b=2"}});
        assert_eq!(answer_set_cookies(&v1), ["__Host-b=2"]);
        assert!(answer_set_cookies(&json!({"statusCode": 200})).is_empty());
        assert_eq!(cookie_pair("__Host-a=1; Secure"), Some(("__Host-a", "1")));
    }
}
