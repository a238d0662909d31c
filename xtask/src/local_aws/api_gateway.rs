//! The local HTTP front: what API Gateway's HTTP API does for calsync in AWS, on one loopback port.
//!
//! It serves the routes `template.yaml` declares (read from the template, so there is no second
//! list to keep in step), turns each request into an API Gateway HTTP API v2 event, invokes the
//! function that owns the route under the Runtime Interface Emulator, and turns the function's
//! answer (status, headers, cookies, body) back into HTTP.
//!
//! In front of the functions it applies what the template's `HttpApi` declares, as API Gateway
//! does, refusals included:
//! - the default **JWT authorizer** ([`JwtAuthorizer`]) on every route but those with
//!   `Auth: Authorizer: NONE`: a bearer token in `Authorization`, RS256-signed by a key of the
//!   JWKS that `{JwtIssuer}/.well-known/openid-configuration` points at, `iss` equal to
//!   `JwtIssuer`, `aud` one of `JwtAudience`, `exp`, `nbf` and `iat` in force (no leeway). Its
//!   claims reach the function as strings in `requestContext.authorizer.jwt.claims`; anything
//!   else is `401 {"message":"Unauthorized"}` and the function is not invoked.
//! - the **CORS configuration**: preflight `OPTIONS` answered by the gateway itself (`204`, the
//!   allowed methods, headers and max age), `Access-Control-Allow-Origin` on every answer only for
//!   an allowed origin, `Access-Control-Allow-Credentials` only when `AllowCredentials` is true;
//!   CORS headers a function sets are dropped, as API Gateway overrides them.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use anyhow::{Result, bail};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use serde_json::{Map, Value, json};
use testkit::api_gateway::HttpApiEvent;
use testkit::template::{CorsSpec, HttpApiSpec, JwtAuthorizerSpec, Template};
use tokio::sync::Mutex;

use super::issuer::DISCOVERY_PATH;

/// One HTTP API route of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: String,
    /// The template's logical id of the function serving the route, e.g. `OAuthStartFunction`.
    pub function: String,
    pub authorized: bool,
}

/// Every `HttpApi` route the template declares, with the function serving it.
pub fn routes_from_template(template: &Template) -> Result<Vec<Route>> {
    let mut routes = Vec::new();
    for function in template.functions()? {
        for route in function.routes {
            routes.push(Route {
                method: route.method.parse()?,
                path: route.path,
                function: function.logical_id.clone(),
                authorized: route.authorized,
            });
        }
    }
    if routes.is_empty() {
        bail!("template.yaml declares no HttpApi routes");
    }
    Ok(routes)
}

/// Where the front sends each function's invocations: the RIE invoke URL by logical id.
pub type Invokers = HashMap<String, String>;

/// Why the JWT authorizer refused a request (logged without the token; the caller sees 401).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token in Authorization")]
    NoToken,
    #[error("the issuer's JWKS could not be read: {0}")]
    Jwks(String),
    #[error("no key of the issuer's JWKS has the token's kid")]
    UnknownKey,
    #[error("the token is not valid: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token does not have a valid audience")]
    Audience,
}

/// API Gateway's JWT authorizer for one issuer and its audiences; the JWKS is fetched on first
/// use and again when a token names a key it does not hold.
pub struct JwtAuthorizer {
    spec: JwtAuthorizerSpec,
    http: reqwest::Client,
    keys: Mutex<Option<JwkSet>>,
}

impl JwtAuthorizer {
    pub fn new(spec: JwtAuthorizerSpec) -> Self {
        Self {
            spec,
            http: reqwest::Client::new(),
            keys: Mutex::new(None),
        }
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, Refusal> {
        let get = async |url: String| -> Result<Value, reqwest::Error> {
            self.http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        };
        let discovery_url = format!(
            "{}/{DISCOVERY_PATH}",
            self.spec.issuer.trim_end_matches('/')
        );
        let discovery = get(discovery_url)
            .await
            .map_err(|e| Refusal::Jwks(e.to_string()))?;
        let jwks_uri = discovery["jwks_uri"]
            .as_str()
            .ok_or_else(|| Refusal::Jwks("the discovery document has no jwks_uri".into()))?;
        let jwks = get(jwks_uri.to_string())
            .await
            .map_err(|e| Refusal::Jwks(e.to_string()))?;
        serde_json::from_value(jwks).map_err(|e| Refusal::Jwks(e.to_string()))
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, Refusal> {
        let mut keys = self.keys.lock().await;
        for attempt in 0..2 {
            if keys.is_none() || attempt == 1 {
                *keys = Some(self.fetch_jwks().await?);
            }
            if let Some(jwk) = keys.as_ref().and_then(|set| set.find(kid)) {
                return Ok(DecodingKey::from_jwk(jwk)?);
            }
        }
        Err(Refusal::UnknownKey)
    }

    /// The claims of the request's valid token, as strings (as API Gateway passes them).
    pub async fn authorize(&self, headers: &HeaderMap) -> Result<HashMap<String, String>, Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| match v.get(..7) {
                Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => v[7..].trim(),
                _ => v.trim(),
            })
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::NoToken)?;
        let header = jsonwebtoken::decode_header(token)?;
        let kid = header.kid.ok_or(Refusal::UnknownKey)?;
        let key = self.key(&kid).await?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.spec.issuer]);
        // Checked below: API Gateway takes `client_id` when there is no `aud` (Cognito's
        // access tokens carry only `client_id`).
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)?.claims;
        let audiences = match claims.get("aud").or_else(|| claims.get("client_id")) {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|a| self.spec.audience.iter().any(|b| b == a))
        {
            return Err(Refusal::Audience);
        }
        if claims
            .get("iat")
            .and_then(Value::as_i64)
            .is_some_and(|iat| iat > chrono::Utc::now().timestamp())
        {
            return Err(Refusal::IssuedInFuture);
        }
        Ok(claims
            .into_iter()
            .map(|(name, value)| (name, claim_string(&value)))
            .collect())
    }
}

/// A claim as API Gateway hands it on: strings as they are, lists as `[a b]`, others as JSON.
fn claim_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(claim_string).collect::<Vec<_>>().join(" ")
        ),
        other => other.to_string(),
    }
}

struct Front {
    routes: Vec<Route>,
    invokers: Invokers,
    /// One per function: an RIE is one Lambda environment, which takes one event at a time (a
    /// second invocation while one runs crashes the RIE: `ReserveFailed: AlreadyReserved`, then
    /// a nil pointer). AWS would start another environment; locally they wait their turn.
    environments: HashMap<String, Mutex<()>>,
    http: reqwest::Client,
    authorizer: Option<JwtAuthorizer>,
    cors: Option<CorsSpec>,
}

/// Serves the front on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    routes: Vec<Route>,
    invokers: Invokers,
    api: HttpApiSpec,
) -> Result<()> {
    for route in &routes {
        if !invokers.contains_key(&route.function) {
            bail!(
                "no running function for {} (route {} {})",
                route.function,
                route.method,
                route.path
            );
        }
        if route.authorized && api.jwt.is_none() {
            bail!(
                "route {} {} needs an authorizer the template does not declare",
                route.method,
                route.path
            );
        }
    }
    let environments = invokers
        .keys()
        .map(|function| (function.clone(), Mutex::new(())))
        .collect();
    let state = Arc::new(Front {
        routes,
        invokers,
        environments,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        authorizer: api.jwt.map(JwtAuthorizer::new),
        cors: api.cors,
    });
    let app = Router::new().fallback(gateway).with_state(state);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

/// The CORS headers API Gateway adds for a request from `origin` (none for another origin).
fn cors_headers(
    cors: &CorsSpec,
    origin: Option<&str>,
    preflight: bool,
) -> Vec<(header::HeaderName, String)> {
    let Some(origin) = origin.filter(|o| {
        cors.allow_origins
            .iter()
            .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(o))
    }) else {
        return Vec::new();
    };
    let mut out = vec![(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.to_string())];
    if cors.allow_credentials {
        out.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".into()));
    }
    if preflight {
        out.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            cors.allow_methods.join(","),
        ));
        out.push((
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            cors.allow_headers.join(","),
        ));
        if let Some(max_age) = cors.max_age {
            out.push((header::ACCESS_CONTROL_MAX_AGE, max_age.to_string()));
        }
    } else if !cors.expose_headers.is_empty() {
        out.push((
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            cors.expose_headers.join(","),
        ));
    }
    out
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "message": message }).to_string(),
    )
        .into_response()
}

async fn gateway(
    State(front): State<Arc<Front>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let preflight =
        method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = match &front.cors {
        // API Gateway answers a preflight itself, before routes and authorizers.
        Some(_) if preflight => StatusCode::NO_CONTENT.into_response(),
        _ => route_request(&front, method, &uri, &headers, &body).await,
    };
    if let Some(cors) = &front.cors {
        let answer = response.headers_mut();
        let theirs: Vec<_> = answer
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in theirs {
            answer.remove(name);
        }
        for (name, value) in cors_headers(cors, origin, preflight) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                answer.insert(name, value);
            }
        }
        answer.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

async fn route_request(
    front: &Front,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(route) = front
        .routes
        .iter()
        .find(|r| r.method == method && r.path == uri.path())
    else {
        // API Gateway's own answer for a route it does not have.
        return json_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let claims = match (&front.authorizer, route.authorized) {
        (Some(authorizer), true) => match authorizer.authorize(headers).await {
            Ok(claims) => Some(claims),
            Err(refusal) => {
                tracing::info!(route = %uri.path(), %refusal, "JWT authorizer refused");
                let mut response = json_error(StatusCode::UNAUTHORIZED, "Unauthorized");
                // As API Gateway says why (never with the token).
                let why = format!(
                    r#"Bearer scope="" error="invalid_token" error_description="{refusal}""#
                );
                if let Ok(value) = HeaderValue::from_str(&why.replace('\n', " ")) {
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, value);
                }
                return response;
            }
        },
        _ => None,
    };
    let event = api_gateway_event(route, uri, headers, body, claims);
    let url = &front.invokers[&route.function];
    let _environment = front.environments[&route.function].lock().await;
    let answer = match front.http.post(url).json(&event).send().await {
        Ok(response) => response.json::<Value>().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(answer) => response_from_lambda(&answer),
        Err(e) => {
            tracing::error!(function = %route.function, error = %e, "invocation failed");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
        }
    }
}

/// The API Gateway HTTP API payload format 2.0 event for one request; the authorizer's claims
/// only on routes behind it.
pub fn api_gateway_event(
    route: &Route,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    claims: Option<HashMap<String, String>>,
) -> Value {
    let mut event = HttpApiEvent::new(route.method.clone(), uri.path())
        .query(uri.query().unwrap_or_default())
        .body(body);
    for (name, value) in headers {
        if let Ok(value) = value.to_str() {
            event = event.header(name.as_str(), value);
        }
    }
    if let (true, Some(claims)) = (route.authorized, claims) {
        event = event.claims(claims);
    }
    event.json()
}

/// Turns a function's v2 answer back into HTTP, as API Gateway does.
pub fn response_from_lambda(answer: &Value) -> Response {
    if answer.get("errorType").is_some() || answer.get("errorMessage").is_some() {
        tracing::error!(answer = %answer, "function error");
        return json_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    }
    let status = answer
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = Response::builder().status(status);
    for (name, value) in answer
        .get("headers")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(value) = value.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
            response = response.header(name, value);
        }
    }
    for (name, values) in answer
        .get("multiValueHeaders")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        for value in values.as_array().into_iter().flatten() {
            if let Some(value) = value.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
                response = response.header(name, value);
            }
        }
    }
    for cookie in answer
        .get("cookies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(value) = cookie.as_str().and_then(|v| HeaderValue::from_str(v).ok()) {
            response = response.header(header::SET_COOKIE, value);
        }
    }
    let body = answer.get("body").and_then(Value::as_str).unwrap_or("");
    let body = if answer.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_default()
    } else {
        body.as_bytes().to_vec()
    };
    response
        .body(Body::from(body))
        .unwrap_or_else(|_| json_error(StatusCode::BAD_GATEWAY, "Bad Gateway"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_aws::{app, issuer::Issuer};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use secrecy::ExposeSecret;

    fn start_route() -> Route {
        Route {
            method: Method::GET,
            path: "/oauth/google/start".into(),
            function: "OAuthStartFunction".into(),
            authorized: true,
        }
    }

    #[test]
    fn event_carries_cookies_query_and_claims() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=1; b=2".parse().unwrap());
        headers.insert(header::ACCEPT, "application/json".parse().unwrap());
        let uri: Uri = "/oauth/google/start?return_to=https%3A%2F%2Fx.test%2F&x=1&x=2"
            .parse()
            .unwrap();
        let claims = HashMap::from([("sub".to_string(), "user-1".to_string())]);
        let event = api_gateway_event(&start_route(), &uri, &headers, b"", Some(claims));
        // The request's parts reach the event; HttpApiEvent's own tests cover how each is shaped.
        assert_eq!(event["cookies"], json!(["a=1", "b=2"]));
        assert_eq!(event["headers"]["accept"], "application/json");
        assert_eq!(event["queryStringParameters"]["x"], "1,2");
        assert_eq!(
            event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"],
            "user-1"
        );
        // The event must be one lambda_http accepts.
        let parsed: aws_lambda_events::apigw::ApiGatewayV2httpRequest =
            serde_json::from_value(event).expect("valid v2 event");
        assert_eq!(parsed.raw_path.as_deref(), Some("/oauth/google/start"));
    }

    #[test]
    fn unauthorized_route_gets_no_claims() {
        let mut route = start_route();
        route.authorized = false;
        let event = api_gateway_event(
            &route,
            &"/oauth/google/callback".parse().unwrap(),
            &HeaderMap::new(),
            b"",
            Some(HashMap::from([("sub".to_string(), "user-1".to_string())])),
        );
        assert!(event["requestContext"].get("authorizer").is_none());
    }

    #[test]
    fn answer_maps_status_headers_and_each_cookie() {
        let answer = json!({
            "statusCode": 302,
            "headers": {"location": "https://google.test/auth"},
            "cookies": ["__Host-a=1; Secure; Path=/", "b=2"],
            "body": ""
        });
        let response = response_from_lambda(&answer);
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://google.test/auth"
        );
        let cookies: Vec<_> = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .collect();
        assert_eq!(cookies.len(), 2);
    }

    /// An issuer serving its discovery document and JWKS (through the app stand-in), and an
    /// authorizer for it with two audiences.
    async fn issuer_and_authorizer() -> (Issuer, JwtAuthorizer) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let issuer = Issuer::ephemeral(&url).unwrap();
        let served = issuer.clone();
        let api = url::Url::parse("http://localhost:1/").unwrap();
        tokio::spawn(async move { app::serve(listener, served, "aud-1".into(), &api).await });
        let spec = JwtAuthorizerSpec {
            issuer: url,
            audience: vec!["aud-0".into(), "aud-1".into()],
        };
        (issuer, JwtAuthorizer::new(spec))
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, token.parse().unwrap());
        headers
    }

    #[tokio::test]
    async fn authorizer_checks_what_api_gateway_checks() {
        let (issuer, authorizer) = issuer_and_authorizer().await;
        let now = chrono::Utc::now().timestamp();
        let claims = |change: Value| {
            let mut claims = json!({"iss": issuer.issuer, "sub": "u1", "aud": "aud-1",
                                    "iat": now, "nbf": now, "exp": now + 60, "groups": ["a", "b"]});
            claims
                .as_object_mut()
                .unwrap()
                .extend(change.as_object().unwrap().clone());
            claims
        };
        let signed = |claims: &Value| issuer.sign(claims).unwrap().expose_secret().to_string();
        let token = |change: Value| signed(&claims(change));

        let valid = token(json!({}));
        let passed = authorizer
            .authorize(&bearer(&format!("Bearer {valid}")))
            .await
            .unwrap();
        assert_eq!(passed["sub"], "u1");
        assert_eq!(passed["exp"], (now + 60).to_string(), "claims are strings");
        assert_eq!(passed["groups"], "[a b]");
        // API Gateway takes the header's value with or without the scheme.
        assert!(authorizer.authorize(&bearer(&valid)).await.is_ok());
        // `client_id` stands in for a missing `aud`, never for a wrong one.
        let mut cognito = claims(json!({"client_id": "aud-0"}));
        cognito.as_object_mut().unwrap().remove("aud");
        assert!(
            authorizer
                .authorize(&bearer(&signed(&cognito)))
                .await
                .is_ok()
        );

        let other_key = Issuer::ephemeral(&issuer.issuer).unwrap();
        let mut tampered: Vec<String> = valid.split('.').map(str::to_string).collect();
        tampered[1] = URL_SAFE_NO_PAD.encode(claims(json!({"sub": "admin"})).to_string());
        let mut hs256 = jsonwebtoken::Header::new(Algorithm::HS256);
        hs256.kid = jsonwebtoken::decode_header(&valid).unwrap().kid;
        let secret = jsonwebtoken::EncodingKey::from_secret(b"k");
        let refused = [
            ("no token", HeaderMap::new()),
            (
                "other issuer",
                bearer(&token(json!({"iss": "http://other.test"}))),
            ),
            ("other audience", bearer(&token(json!({"aud": "aud-2"})))),
            (
                "other audience, good client_id",
                bearer(&token(json!({"aud": "aud-2", "client_id": "aud-1"}))),
            ),
            ("expired", bearer(&token(json!({"exp": now - 1})))),
            ("not yet valid", bearer(&token(json!({"nbf": now + 60})))),
            (
                "issued in the future",
                bearer(&token(json!({"iat": now + 60}))),
            ),
            (
                "no exp",
                bearer(&signed(&json!({"iss": issuer.issuer, "aud": "aud-1"}))),
            ),
            (
                "another key",
                bearer(other_key.mint("u1", "aud-1").unwrap().expose_secret()),
            ),
            ("tampered", bearer(&tampered.join("."))),
            (
                "HS256",
                bearer(&jsonwebtoken::encode(&hs256, &claims(json!({})), &secret).unwrap()),
            ),
        ];
        for (case, headers) in refused {
            assert!(
                authorizer.authorize(&headers).await.is_err(),
                "{case} passed"
            );
        }
    }

    #[test]
    fn cors_answers_only_allowed_origins_and_no_credentials_unless_configured() {
        let app = "http://127.0.0.1:3001";
        let cors = CorsSpec {
            allow_origins: vec![app.into()],
            allow_headers: vec!["authorization".into(), "content-type".into()],
            allow_methods: vec!["GET".into(), "POST".into()],
            max_age: Some(600),
            ..CorsSpec::default()
        };
        let preflight: HashMap<_, _> = cors_headers(&cors, Some(app), true).into_iter().collect();
        assert_eq!(preflight[&header::ACCESS_CONTROL_ALLOW_ORIGIN], app);
        assert_eq!(
            preflight[&header::ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization,content-type"
        );
        assert_eq!(preflight[&header::ACCESS_CONTROL_MAX_AGE], "600");
        assert!(!preflight.contains_key(&header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert!(cors_headers(&cors, Some("http://127.0.0.2:3001"), true).is_empty());
        assert!(cors_headers(&cors, None, false).is_empty());
        let credentials = CorsSpec {
            allow_credentials: true,
            ..cors
        };
        assert!(
            cors_headers(&credentials, Some(app), false)
                .contains(&(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".into()))
        );
    }

    /// The gateway itself: a preflight answered without the function, a protected route refused
    /// without invoking it, an unknown route 404 (the function's URL here answers nothing).
    #[tokio::test]
    async fn the_gateway_refuses_before_invoking() {
        let (_, authorizer) = issuer_and_authorizer().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = "http://127.0.0.1:3001";
        let api = HttpApiSpec {
            jwt: Some(authorizer.spec.clone()),
            cors: Some(CorsSpec {
                allow_origins: vec![app.into()],
                allow_methods: vec!["GET".into()],
                allow_headers: vec!["authorization".into()],
                ..CorsSpec::default()
            }),
        };
        let invokers = Invokers::from([(
            "OAuthStartFunction".to_string(),
            "http://127.0.0.1:9/".to_string(),
        )]);
        tokio::spawn(serve(listener, vec![start_route()], invokers, api));
        let http = reqwest::Client::new();
        let start = format!("{base}/oauth/google/start");
        let preflight = http
            .request(Method::OPTIONS, &start)
            .header("origin", app)
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap();
        assert_eq!(preflight.status(), 204);
        assert_eq!(preflight.headers()["access-control-allow-origin"], app);
        let refused = http.get(&start).header("origin", app).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.headers()["access-control-allow-origin"], app);
        let why = refused.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            why.starts_with(r#"Bearer scope="" error="invalid_token""#),
            "{why}"
        );
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body, json!({"message": "Unauthorized"}));
        let unknown = http.get(format!("{base}/nope")).send().await.unwrap();
        assert_eq!(unknown.status(), 404);
    }

    #[test]
    fn function_error_is_a_500() {
        let response = response_from_lambda(&json!({"errorType": "Panic", "errorMessage": "boom"}));
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
