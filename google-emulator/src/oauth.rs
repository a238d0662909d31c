//! Google's OAuth 2.0 endpoints for web server apps: validating an authorization request, the
//! user's consent decision, the token endpoint (authorization code with PKCE, refresh) and revoke.
//!
//! Behaviour follows "Using OAuth 2.0 for Web Server Applications": exact redirect URIs,
//! single-use ten-minute codes, refresh tokens only for `access_type=offline` on a first consent
//! or with `prompt=consent`, granular consent, and Google's JSON error bodies.

use std::collections::{BTreeSet, HashMap};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Duration;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use url::Url;

use crate::state::{AuthCode, FaultTarget, Grant, SharedState, State as World, sentinel_token};

pub const SCOPE_OPENID: &str = "openid";
pub const SCOPE_EMAIL: &str = "email";
pub const SCOPE_PROFILE: &str = "profile";
pub const SCOPE_USERINFO_EMAIL: &str = "https://www.googleapis.com/auth/userinfo.email";
pub const SCOPE_USERINFO_PROFILE: &str = "https://www.googleapis.com/auth/userinfo.profile";
const GOOGLE_SCOPE_PREFIX: &str = "https://www.googleapis.com/auth/";

/// Why an authorization request is refused. Google shows these on an error page and does not
/// redirect back to the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationError {
    pub status: StatusCode,
    pub error: &'static str,
    pub description: String,
}

impl AuthorizationError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }

    fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }
}

/// A validated authorization request (the query of `o/oauth2/v2/auth`).
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub access_type_offline: bool,
    pub prompt_consent: bool,
    pub include_granted_scopes: bool,
    pub login_hint: Option<String>,
    pub nonce: Option<String>,
}

/// A parameter Google requires: present and not empty, else `missing()`.
fn required<'a, E>(
    params: &'a HashMap<String, String>,
    name: &str,
    missing: impl FnOnce() -> E,
) -> Result<&'a String, E> {
    params
        .get(name)
        .filter(|v| !v.is_empty())
        .ok_or_else(missing)
}

impl AuthorizationRequest {
    /// Validates the query parameters in the order Google does: client first, then the
    /// redirect URI, then the rest.
    pub fn parse(
        world: &World,
        params: &HashMap<String, String>,
    ) -> Result<Self, AuthorizationError> {
        let client_id = required(params, "client_id", || {
            AuthorizationError::invalid_request("Missing required parameter: client_id")
        })?;
        let client = world.clients.get(client_id).ok_or_else(|| {
            AuthorizationError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "The OAuth client was not found.",
            )
        })?;
        let redirect_uri = required(params, "redirect_uri", || {
            AuthorizationError::invalid_request("Missing required parameter: redirect_uri")
        })?;
        if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
            return Err(AuthorizationError::new(
                StatusCode::BAD_REQUEST,
                "redirect_uri_mismatch",
                format!(
                    "You can't sign in to this app because it doesn't comply with Google's OAuth 2.0 policy. \
                     The redirect URI in the request, {redirect_uri}, does not match the ones authorized for the OAuth client."
                ),
            ));
        }
        match params.get("response_type").map(String::as_str) {
            None | Some("") => {
                return Err(AuthorizationError::invalid_request(
                    "Required parameter is missing: response_type",
                ));
            }
            Some("code") => {}
            Some(other) => {
                return Err(AuthorizationError::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_response_type",
                    format!("Invalid response_type: {other}"),
                ));
            }
        }
        let scope = params.get("scope").map(String::as_str).unwrap_or("");
        let scopes: Vec<String> = scope.split_whitespace().map(str::to_owned).collect();
        if scopes.is_empty() {
            return Err(AuthorizationError::invalid_request(
                "Missing required parameter: scope",
            ));
        }
        if let Some(bad) = scopes.iter().find(|s| !is_known_scope(s)) {
            return Err(AuthorizationError::new(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                format!("Some requested scopes were invalid. {{invalid=[{bad}]}}"),
            ));
        }
        let code_challenge = params.get("code_challenge").cloned();
        let code_challenge_method = params.get("code_challenge_method").cloned();
        match (&code_challenge, code_challenge_method.as_deref()) {
            (None, Some(_)) => {
                return Err(AuthorizationError::invalid_request(
                    "Missing required parameter: code_challenge",
                ));
            }
            (Some(_), Some(method)) if method != "S256" && method != "plain" => {
                return Err(AuthorizationError::invalid_request(format!(
                    "Invalid code_challenge_method: {method}"
                )));
            }
            (Some(challenge), method) => {
                let method = method.unwrap_or("plain");
                let valid = if method == "S256" {
                    challenge.len() == 43
                        && challenge
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                } else {
                    is_valid_verifier(challenge)
                };
                if !valid {
                    return Err(AuthorizationError::invalid_request(
                        "Invalid code_challenge.",
                    ));
                }
            }
            (None, None) => {}
        }
        let access_type_offline = match params.get("access_type").map(String::as_str) {
            None | Some("online") => false,
            Some("offline") => true,
            Some(other) => {
                return Err(AuthorizationError::invalid_request(format!(
                    "Invalid access_type: {other}"
                )));
            }
        };
        let prompts: Vec<&str> = params
            .get("prompt")
            .map(|p| p.split_whitespace().collect())
            .unwrap_or_default();
        if prompts.contains(&"none") && prompts.len() > 1 {
            return Err(AuthorizationError::invalid_request(
                "prompt=none must not be combined with other values",
            ));
        }
        if params.contains_key("approval_prompt") && params.contains_key("prompt") {
            return Err(AuthorizationError::invalid_request(
                "Conflict params: approval_prompt and prompt",
            ));
        }
        let include_granted_scopes = params
            .get("include_granted_scopes")
            .is_some_and(|v| v == "true");
        Ok(Self {
            client_id: client_id.clone(),
            redirect_uri: redirect_uri.clone(),
            scopes,
            state: params.get("state").cloned(),
            code_challenge,
            code_challenge_method,
            access_type_offline,
            prompt_consent: prompts.contains(&"consent"),
            include_granted_scopes,
            login_hint: params.get("login_hint").cloned(),
            nonce: params.get("nonce").cloned(),
        })
    }

    /// Parses the query of a full authorization URL.
    pub fn from_url(world: &World, url: &str) -> Result<Self, AuthorizationError> {
        let url = Url::parse(url).map_err(|_| {
            AuthorizationError::invalid_request("authorization_url is not an absolute URL")
        })?;
        let params: HashMap<String, String> = url.query_pairs().into_owned().collect();
        Self::parse(world, &params)
    }
}

/// The user's answer on the consent page.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow {
        email: String,
        removed_scopes: Vec<String>,
    },
    Deny,
}

/// Scopes that are always granted when requested: the user cannot untick them.
pub fn is_identity_scope(scope: &str) -> bool {
    matches!(
        scope,
        SCOPE_OPENID | SCOPE_EMAIL | SCOPE_PROFILE | SCOPE_USERINFO_EMAIL | SCOPE_USERINFO_PROFILE
    )
}

fn is_known_scope(scope: &str) -> bool {
    is_identity_scope(scope)
        || (scope.starts_with(GOOGLE_SCOPE_PREFIX) && scope.len() > GOOGLE_SCOPE_PREFIX.len())
}

/// Orders granted scopes the way Google reports them: short names first, then the userinfo
/// URLs they imply, then the rest; `email`/`profile` bring their userinfo URL along.
pub fn canonical_scopes(scopes: &BTreeSet<String>) -> Vec<String> {
    let mut all = scopes.clone();
    if all.contains(SCOPE_EMAIL) {
        all.insert(SCOPE_USERINFO_EMAIL.to_owned());
    }
    if all.contains(SCOPE_PROFILE) {
        all.insert(SCOPE_USERINFO_PROFILE.to_owned());
    }
    let short = all.iter().filter(|s| !s.starts_with("https://"));
    let userinfo = all
        .iter()
        .filter(|s| *s == SCOPE_USERINFO_EMAIL || *s == SCOPE_USERINFO_PROFILE);
    let rest = all.iter().filter(|s| {
        s.starts_with("https://") && *s != SCOPE_USERINFO_EMAIL && *s != SCOPE_USERINFO_PROFILE
    });
    short.chain(userinfo).chain(rest).cloned().collect()
}

/// Applies the user's decision: issues a code and answers the URL the browser is sent to.
pub fn decide(
    world: &mut World,
    request: &AuthorizationRequest,
    decision: &Decision,
) -> Result<Url, AuthorizationError> {
    let mut redirect = Url::parse(&request.redirect_uri)
        .map_err(|_| AuthorizationError::invalid_request("redirect_uri is not an absolute URL"))?;
    let (email, removed) = match decision {
        Decision::Deny => {
            {
                let mut query = redirect.query_pairs_mut();
                query.append_pair("error", "access_denied");
                if let Some(state) = &request.state {
                    query.append_pair("state", state);
                }
            }
            return Ok(redirect);
        }
        Decision::Allow {
            email,
            removed_scopes,
        } => (email, removed_scopes),
    };
    if !world.accounts.contains_key(email) {
        return Err(AuthorizationError::invalid_request(format!(
            "No account {email} on this emulator"
        )));
    }
    let mut granted: BTreeSet<String> = request
        .scopes
        .iter()
        .filter(|s| is_identity_scope(s) || !removed.contains(s))
        .cloned()
        .collect();
    let consent_key = (request.client_id.clone(), email.clone());
    let previous = world.consents.get(&consent_key).cloned();
    if request.include_granted_scopes
        && let Some(previous) = &previous
    {
        granted.extend(previous.iter().cloned());
    }
    let granted = canonical_scopes(&granted);
    world
        .consents
        .entry(consent_key)
        .or_default()
        .extend(granted.iter().cloned());

    let code = format!("4/0{}", sentinel_token(70));
    world.remember_secret(&code);
    let now = world.now();
    world.codes.insert(
        code.clone(),
        AuthCode {
            client_id: request.client_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            email: email.clone(),
            scopes: granted.clone(),
            code_challenge: request.code_challenge.clone(),
            code_challenge_method: request.code_challenge_method.clone(),
            nonce: request.nonce.clone(),
            issue_refresh_token: request.access_type_offline
                && (previous.is_none() || request.prompt_consent),
            expires_at: now + Duration::seconds(crate::state::CODE_LIFETIME_SECONDS),
            redeemed_grant: None,
        },
    );
    let authuser = world
        .accounts
        .keys()
        .position(|e| e == email)
        .unwrap_or(0)
        .to_string();
    {
        let mut query = redirect.query_pairs_mut();
        if let Some(state) = &request.state {
            query.append_pair("state", state);
        }
        query.append_pair("code", &code);
        query.append_pair("scope", &granted.join(" "));
        query.append_pair("authuser", &authuser);
        query.append_pair("prompt", "consent");
    }
    Ok(redirect)
}

/// RFC 7636: 43 to 128 characters from the unreserved set.
pub fn is_valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An error from the token or revoke endpoint, answered as Google's JSON body.
struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: &'static str,
}

impl TokenError {
    fn new(status: StatusCode, error: &'static str, description: &'static str) -> Self {
        Self {
            status,
            error,
            description,
        }
    }
    fn invalid_request(description: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }
    fn bad_code() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", "Bad Request")
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        json_no_store(
            self.status,
            json!({"error": self.error, "error_description": self.description}),
        )
    }
}

fn json_no_store(status: StatusCode, body: Value) -> Response {
    (
        status,
        [
            (
                header::CACHE_CONTROL,
                "no-cache, no-store, max-age=0, must-revalidate",
            ),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(body),
    )
        .into_response()
}

fn parse_form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// Client credentials from HTTP Basic (form-url-encoded id and secret, as RFC 6749 says) or
/// from the form body.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, Option<String>), TokenError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or("");
        let encoded = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
            .ok_or_else(|| {
                TokenError::new(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized")
            })?;
        let decoded = STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                TokenError::new(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized")
            })?;
        let (id, secret) = decoded.split_once(':').ok_or_else(|| {
            TokenError::new(StatusCode::UNAUTHORIZED, "invalid_client", "Unauthorized")
        })?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return Ok((decode(id), Some(decode(secret))));
    }
    let id = required(form, "client_id", || {
        TokenError::invalid_request("Could not determine client ID from request.")
    })?;
    Ok((id.clone(), form.get("client_secret").cloned()))
}

fn authenticate_client(world: &World, id: &str, secret: Option<&str>) -> Result<(), TokenError> {
    let client = world.clients.get(id).ok_or_else(|| {
        TokenError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The OAuth client was not found.",
        )
    })?;
    match secret {
        Some(secret) if secret == client.client_secret => Ok(()),
        _ => Err(TokenError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Unauthorized",
        )),
    }
}

/// `POST token`.
pub async fn token(State(shared): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let fault = shared.lock().take_fault(FaultTarget::Token);
    if let Some(fault) = fault {
        if fault.delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(fault.delay_ms)).await;
        }
        if let Some(status) = fault.status {
            count_token_call(&mut shared.lock(), &form);
            return token_fault_response(status, fault.reason.as_deref());
        }
    }
    let mut world = shared.lock();
    count_token_call(&mut world, &form);
    for key in ["code", "refresh_token", "code_verifier", "client_secret"] {
        if let Some(value) = form.get(key) {
            world.remember_secret(value);
        }
    }
    match token_inner(&mut world, &headers, &form) {
        Ok(body) => json_no_store(StatusCode::OK, body),
        Err(error) => error.into_response(),
    }
}

fn count_token_call(world: &mut World, form: &HashMap<String, String>) {
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => world.stats.token.authorization_code += 1,
        Some("refresh_token") => world.stats.token.refresh_token += 1,
        _ => {}
    }
}

fn token_fault_response(status: u16, reason: Option<&str>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let error = reason.unwrap_or(match status.as_u16() {
        429 => "rate_limit_exceeded",
        503 => "temporarily_unavailable",
        _ => "internal_failure",
    });
    json_no_store(
        status,
        json!({"error": error, "error_description": "Injected by the emulator's fault queue."}),
    )
}

fn token_inner(
    world: &mut World,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<Value, TokenError> {
    let grant_type = required(form, "grant_type", || {
        TokenError::invalid_request("Required parameter is missing: grant_type")
    })?
    .clone();
    let (client_id, secret) = client_credentials(headers, form)?;
    authenticate_client(world, &client_id, secret.as_deref())?;
    match grant_type.as_str() {
        "authorization_code" => exchange_code(world, &client_id, form),
        "refresh_token" => refresh(world, &client_id, form),
        _ => Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Invalid grant_type",
        )),
    }
}

fn exchange_code(
    world: &mut World,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Result<Value, TokenError> {
    let code = required(form, "code", || {
        TokenError::invalid_request("Missing required parameter: code")
    })?;
    let redirect_uri = required(form, "redirect_uri", || {
        TokenError::invalid_request("Missing parameter: redirect_uri")
    })?;
    let now = world.now();
    let record = world
        .codes
        .get(code)
        .cloned()
        .ok_or_else(TokenError::bad_code)?;
    if let Some(grant_id) = record.redeemed_grant {
        // A replayed code: refuse it and revoke what it produced (RFC 6749 section 4.1.2).
        world.revoke_grant(grant_id);
        return Err(TokenError::bad_code());
    }
    if record.client_id != client_id || record.expires_at <= now {
        return Err(TokenError::bad_code());
    }
    if &record.redirect_uri != redirect_uri {
        return Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "redirect_uri_mismatch",
            "Bad Request",
        ));
    }
    if let Some(challenge) = &record.code_challenge {
        let verifier = required(form, "code_verifier", || {
            TokenError::new(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Missing code verifier.",
            )
        })?;
        if !is_valid_verifier(verifier) {
            return Err(TokenError::new(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Invalid code verifier.",
            ));
        }
        let computed = match record.code_challenge_method.as_deref() {
            Some("S256") => URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
            _ => verifier.clone(),
        };
        if &computed != challenge {
            return Err(TokenError::bad_code());
        }
    }
    let grant_id = world.new_grant(Grant {
        client_id: client_id.to_owned(),
        email: record.email.clone(),
        scopes: record.scopes.clone(),
        nonce: record.nonce.clone(),
        revoked: false,
        refresh_expires_at: None,
    });
    if let Some(stored) = world.codes.get_mut(code) {
        stored.redeemed_grant = Some(grant_id);
    }
    let refresh_token = record
        .issue_refresh_token
        .then(|| world.mint_refresh_token(grant_id));
    let mut body = token_body(world, grant_id);
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = Value::String(refresh_token);
    }
    Ok(body)
}

fn refresh(
    world: &mut World,
    client_id: &str,
    form: &HashMap<String, String>,
) -> Result<Value, TokenError> {
    let refresh_token = required(form, "refresh_token", || {
        TokenError::invalid_request("Missing required parameter: refresh_token")
    })?;
    let expired = || {
        TokenError::new(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Token has been expired or revoked.",
        )
    };
    let grant_id = *world
        .refresh_tokens
        .get(refresh_token)
        .ok_or_else(expired)?;
    let grant = world.grants.get(&grant_id).ok_or_else(expired)?;
    let timed_out = grant.refresh_expires_at.is_some_and(|at| at <= world.now());
    if grant.revoked || timed_out {
        return Err(expired());
    }
    if grant.client_id != client_id {
        return Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "Unauthorized",
        ));
    }
    Ok(token_body(world, grant_id))
}

/// The success body shared by both grant types (without `refresh_token`).
fn token_body(world: &mut World, grant_id: u64) -> Value {
    let (access_token, expires_in) = world.mint_access_token(grant_id);
    let grant = world.grants[&grant_id].clone();
    let mut body = json!({
        "access_token": access_token,
        "expires_in": expires_in,
        "scope": grant.scopes.join(" "),
        "token_type": "Bearer",
    });
    if grant.scopes.iter().any(|s| s == SCOPE_OPENID) {
        body["id_token"] = Value::String(id_token(world, &grant));
    }
    if let Some(at) = grant.refresh_expires_at {
        // Rounded up: the token was minted a moment ago with a whole number of seconds.
        let remaining_ms = (at - world.now()).num_milliseconds().max(0);
        body["refresh_token_expires_in"] = json!((remaining_ms + 999) / 1000);
    }
    body
}

/// An unsigned-in-spirit JWT with Google's header and claims; the signature is random bytes
/// (clients must fetch Google's keys to verify, which the emulator does not serve).
fn id_token(world: &World, grant: &Grant) -> String {
    let now = world.now().timestamp();
    let account = world.accounts.get(&grant.email);
    let sub = account.map(|a| a.sub.clone()).unwrap_or_default();
    let mut claims = json!({
        "iss": "https://accounts.google.com",
        "azp": grant.client_id,
        "aud": grant.client_id,
        "sub": sub,
        "iat": now,
        "exp": now + 3600,
    });
    if grant
        .scopes
        .iter()
        .any(|s| s == SCOPE_EMAIL || s == SCOPE_USERINFO_EMAIL)
    {
        claims["email"] = Value::String(grant.email.clone());
        claims["email_verified"] = Value::Bool(true);
    }
    if let Some(nonce) = &grant.nonce {
        claims["nonce"] = Value::String(nonce.clone());
    }
    let header = json!({"alg": "RS256", "kid": "emulator", "typ": "JWT"});
    let signature: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// `POST revoke`: the token in the form body or the query string.
pub async fn revoke(
    State(shared): State<SharedState>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let form = parse_form(&body);
    let mut world = shared.lock();
    world.stats.revoke += 1;
    let Some(token) = form.get("token").or_else(|| query.get("token")).cloned() else {
        return TokenError::invalid_request("Missing required parameter: token").into_response();
    };
    world.remember_secret(&token);
    let grant_id = world
        .refresh_tokens
        .get(&token)
        .copied()
        .or_else(|| world.access_tokens.get(&token).map(|a| a.grant_id));
    let live = grant_id.and_then(|id| {
        let grant = world.grants.get(&id)?;
        let access_expired = world
            .access_tokens
            .get(&token)
            .is_some_and(|a| a.expires_at <= world.now());
        (!grant.revoked && !access_expired).then(|| (grant.client_id.clone(), grant.email.clone()))
    });
    match live {
        Some((client_id, email)) => {
            world.revoke_client_access(&client_id, &email);
            json_no_store(StatusCode::OK, json!({}))
        }
        None => TokenError::new(
            StatusCode::BAD_REQUEST,
            "invalid_token",
            "Token expired or revoked",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granted_scopes_are_reported_in_googles_form() {
        let scopes: BTreeSet<String> = [
            "openid",
            "email",
            "https://www.googleapis.com/auth/calendar",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(
            canonical_scopes(&scopes).join(" "),
            "email openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/calendar"
        );
    }

    #[test]
    fn verifier_rules() {
        assert!(is_valid_verifier(&"a".repeat(43)));
        assert!(is_valid_verifier(&"-._~".repeat(32)));
        assert!(!is_valid_verifier(&"a".repeat(42)));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}+", "a".repeat(43))));
    }
}
