//! Google's OAuth 2.0 endpoints: the consent URL, the code exchange (PKCE), refresh and revoke.
//!
//! Built on the `oauth2` crate with a reqwest client that follows no redirects and has a timeout.
//! The token endpoint's answers become an [`OAuthError`]: `invalid_grant` and `invalid_client` are
//! their own variants, 5xx, 429, timeouts and network failures are [`OAuthError::Transient`]
//! (worth retrying), anything else is [`OAuthError::Rejected`] with Google's error code. No token
//! ever appears in an error's text: tokens are `secrecy` types and response bodies are never quoted.
//!
//! Revocation is one form POST written here by hand: `oauth2` refuses a revocation URL that is not
//! https (RFC 7009), and the local Google emulator serves plain http.
//!
//! The `id_token` of a code exchange is read without checking its signature: it comes straight from
//! Google's token endpoint over TLS in answer to our own authenticated request, which Google's
//! OpenID Connect documentation names as the case where validation is not needed. Its `aud` must
//! still be our client id.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use oauth2::{
    AsyncHttpClient, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointNotSet, EndpointSet, ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardRevocableToken,
    StandardTokenResponse, TokenResponse, TokenUrl,
    basic::{
        BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
        BasicTokenIntrospectionResponse, BasicTokenType,
    },
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::{
    config::Config,
    secrets::{GoogleClient, SecretsCache, SecretsError},
};

/// Timeout of one call to Google's OAuth endpoints.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime assumed when the token answer has no `expires_in` (Google always sends it).
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error(
        "Google refused the grant (invalid_grant): the code or refresh token is expired, revoked or already used"
    )]
    InvalidGrant,
    #[error(
        "Google refused the refresh token under a session-control policy (invalid_rapt): the user must sign in and connect again"
    )]
    InvalidRapt,
    #[error(
        "Google refused the OAuth client (invalid_client): check the client id and secret in the Google client secret"
    )]
    InvalidClient,
    #[error("Google's OAuth endpoint is unavailable, retry later: {0}")]
    Transient(String),
    #[error("Google's OAuth endpoint refused the request: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected {
        error: String,
        description: Option<String>,
    },
    #[error("Google's id_token is unusable: {0}")]
    IdToken(&'static str),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
}

impl OAuthError {
    pub fn is_transient(&self) -> bool {
        matches!(self, OAuthError::Transient(_))
    }
}

/// A fresh access token from a refresh.
#[derive(Debug, Clone)]
pub struct RefreshedToken {
    pub access_token: SecretString,
    pub expires_at: DateTime<Utc>,
    /// The granted scopes when Google lists them.
    pub scopes: Option<Vec<String>>,
}

/// Who the Google account is, from the `id_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleIdentity {
    pub sub: String,
    pub email: Option<String>,
}

/// The answer to a code exchange.
#[derive(Debug, Clone)]
pub struct CodeExchange {
    pub access_token: SecretString,
    pub expires_at: DateTime<Utc>,
    /// Absent when Google did not issue a new one (a repeated consent).
    pub refresh_token: Option<SecretString>,
    /// The scopes granted, when Google lists them.
    pub scopes: Option<Vec<String>>,
    pub identity: Option<GoogleIdentity>,
}

/// A string whose `Debug` is redacted, for the `id_token` field of the token answer.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct Redacted(String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IdTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<Redacted>,
}

impl ExtraTokenFields for IdTokenFields {}

type GoogleTokenResponse = StandardTokenResponse<IdTokenFields, BasicTokenType>;

type OAuthClient = oauth2::Client<
    BasicErrorResponse,
    GoogleTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Why the HTTP exchange failed before an OAuth answer could be read.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Network(String),
}

/// reqwest behind `oauth2`: 5xx and 429 answers become transport errors, so they read as
/// transient whatever their body says.
#[derive(Clone)]
struct Http(reqwest::Client);

impl<'c> AsyncHttpClient<'c> for Http {
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, TransportError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request: reqwest::Request = request.try_into().map_err(|e: reqwest::Error| {
                TransportError::Network(e.without_url().to_string())
            })?;
            let response = self.0.execute(request).await.map_err(network)?;
            let status = response.status();
            if status.is_server_error() || status.as_u16() == 429 {
                return Err(TransportError::Status(status.as_u16()));
            }
            let mut builder = oauth2::http::Response::builder().status(status);
            for (name, value) in response.headers() {
                builder = builder.header(name, value);
            }
            let body = response.bytes().await.map_err(network)?;
            builder
                .body(body.to_vec())
                .map_err(|e| TransportError::Network(e.to_string()))
        })
    }
}

fn network(error: reqwest::Error) -> TransportError {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    TransportError::Network(format!("{kind}: {}", error.without_url()))
}

fn token_error(error: RequestTokenError<TransportError, BasicErrorResponse>) -> OAuthError {
    match error {
        RequestTokenError::Request(e) => OAuthError::Transient(e.to_string()),
        RequestTokenError::ServerResponse(answer) => match answer.error() {
            // A Workspace session-control policy answers `invalid_grant` with the subtype
            // `invalid_rapt`, which Google also writes into the description ("reauth related
            // error (invalid_rapt)"); the standard error type keeps only the description.
            BasicErrorResponseType::InvalidGrant
                if answer
                    .error_description()
                    .is_some_and(|d| d.contains("invalid_rapt")) =>
            {
                OAuthError::InvalidRapt
            }
            BasicErrorResponseType::InvalidGrant => OAuthError::InvalidGrant,
            BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => {
                OAuthError::InvalidClient
            }
            other => OAuthError::Rejected {
                error: other.as_ref().to_string(),
                description: answer.error_description().cloned(),
            },
        },
        // The body may hold tokens: never quote it.
        RequestTokenError::Parse(_, _) => OAuthError::Rejected {
            error: "unreadable_response".into(),
            description: Some("the token endpoint's answer was not the expected JSON".into()),
        },
        RequestTokenError::Other(message) => OAuthError::Rejected {
            error: "unexpected_response".into(),
            description: Some(message),
        },
    }
}

/// Builds the HTTP client calsync uses for Google: rustls, no redirects, a timeout.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .build()
        .expect("the TLS backend is compiled in")
}

/// Google's OAuth endpoints for calsync's client.
#[derive(Clone)]
pub struct GoogleOAuth {
    http: Http,
    secrets: Arc<SecretsCache>,
    auth_url: AuthUrl,
    token_url: TokenUrl,
    revoke_url: Url,
    redirect_uri: RedirectUrl,
}

impl std::fmt::Debug for GoogleOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleOAuth")
            .field("token_url", &self.token_url.as_str())
            .finish_non_exhaustive()
    }
}

fn expires_at(expires_in: Option<Duration>) -> DateTime<Utc> {
    let lifetime = expires_in.unwrap_or(DEFAULT_EXPIRES_IN);
    Utc::now() + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::hours(1))
}

fn scopes_of(answer: &GoogleTokenResponse) -> Option<Vec<String>> {
    answer
        .scopes()
        .map(|s| s.iter().map(|scope| scope.to_string()).collect())
}

impl GoogleOAuth {
    /// The secrets cache it shares with the grant store (the client secret and the keyring).
    pub fn secrets(&self) -> &SecretsCache {
        &self.secrets
    }

    pub fn new(config: &Config, secrets: Arc<SecretsCache>) -> Self {
        Self::with_http_client(config, secrets, http_client(REQUEST_TIMEOUT))
    }

    pub fn with_http_client(
        config: &Config,
        secrets: Arc<SecretsCache>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            http: Http(http),
            secrets,
            auth_url: AuthUrl::from_url(config.google.auth_url.clone()),
            token_url: TokenUrl::from_url(config.google.token_url.clone()),
            revoke_url: config.google.revoke_url.clone(),
            redirect_uri: RedirectUrl::from_url(config.oauth.redirect_uri.clone()),
        }
    }

    async fn client(&self) -> Result<(OAuthClient, Arc<GoogleClient>), OAuthError> {
        let google = self.secrets.google_client().await?;
        let client = oauth2::Client::new(ClientId::new(google.client_id.clone()))
            .set_client_secret(ClientSecret::new(
                google.client_secret.expose_secret().to_string(),
            ))
            // Google documents the secret in the form body; both work, this is its own example.
            .set_auth_type(AuthType::RequestBody)
            .set_auth_uri(self.auth_url.clone())
            .set_token_uri(self.token_url.clone())
            .set_redirect_uri(self.redirect_uri.clone());
        Ok((client, google))
    }

    /// The consent URL for `state` and `challenge`, with the parameters SPEC lists.
    pub async fn authorization_url(
        &self,
        scopes: &[String],
        state: &str,
        challenge: PkceCodeChallenge,
    ) -> Result<Url, OAuthError> {
        let (client, _) = self.client().await?;
        let state = state.to_string();
        let (url, _) = client
            .authorize_url(move || CsrfToken::new(state))
            .add_scopes(scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge)
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "consent")
            .add_extra_param("include_granted_scopes", "true")
            .url();
        Ok(url)
    }

    /// Exchanges an authorization code with its PKCE verifier at the exact redirect URI.
    pub async fn exchange_code(
        &self,
        code: &SecretString,
        verifier: &SecretString,
    ) -> Result<CodeExchange, OAuthError> {
        let (client, google) = self.client().await?;
        let answer = client
            .exchange_code(AuthorizationCode::new(code.expose_secret().to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_string()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let identity = answer
            .extra_fields()
            .id_token
            .as_ref()
            .map(|t| identity_from_id_token(&t.0, &google.client_id))
            .transpose()?;
        Ok(CodeExchange {
            access_token: SecretString::from(answer.access_token().secret().clone()),
            expires_at: expires_at(answer.expires_in()),
            refresh_token: answer
                .refresh_token()
                .map(|t| SecretString::from(t.secret().clone())),
            scopes: scopes_of(&answer),
            identity,
        })
    }

    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> Result<RefreshedToken, OAuthError> {
        let (client, _) = self.client().await?;
        let token = RefreshToken::new(refresh_token.expose_secret().to_string());
        let answer = client
            .exchange_refresh_token(&token)
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        Ok(RefreshedToken {
            access_token: SecretString::from(answer.access_token().secret().clone()),
            expires_at: expires_at(answer.expires_in()),
            scopes: scopes_of(&answer),
        })
    }

    /// Revokes a token (Google revokes the whole grant it belongs to). A token Google no longer
    /// knows (`invalid_token`) counts as revoked.
    pub async fn revoke(&self, token: &SecretString) -> Result<(), OAuthError> {
        let response = self
            .http
            .0
            .post(self.revoke_url.clone())
            .form(&[("token", token.expose_secret())])
            .send()
            .await
            .map_err(|e| OAuthError::Transient(network(e).to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(OAuthError::Transient(format!("HTTP {}", status.as_u16())));
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            error: Option<String>,
            error_description: Option<String>,
        }
        let body: Option<ErrorBody> = response.json().await.ok();
        let (error, description) = body
            .map(|b| (b.error, b.error_description))
            .unwrap_or_default();
        match error.as_deref() {
            Some("invalid_token") => Ok(()),
            Some("invalid_client") => Err(OAuthError::InvalidClient),
            _ => Err(OAuthError::Rejected {
                error: error.unwrap_or_else(|| format!("http_{}", status.as_u16())),
                description,
            }),
        }
    }
}

/// Reads `sub` and `email` from an id_token's payload (see the module doc on signatures).
pub fn identity_from_id_token(
    id_token: &str,
    client_id: &str,
) -> Result<GoogleIdentity, OAuthError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    #[derive(Deserialize)]
    struct Claims {
        sub: String,
        email: Option<String>,
        aud: Option<Audience>,
        iss: Option<String>,
    }
    let payload = id_token
        .split('.')
        .nth(1)
        .ok_or(OAuthError::IdToken("not a JWT"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| OAuthError::IdToken("payload is not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&bytes).map_err(|_| OAuthError::IdToken("payload lacks sub"))?;
    // Google's two documented spellings of its issuer; anything else (or none) did not come from
    // Google's token endpoint, whatever the TLS connection said.
    if !matches!(
        claims.iss.as_deref(),
        Some("https://accounts.google.com" | "accounts.google.com")
    ) {
        return Err(OAuthError::IdToken("not issued by Google (iss)"));
    }
    let audience_ok = match &claims.aud {
        None => false,
        Some(Audience::One(aud)) => aud == client_id,
        Some(Audience::Many(auds)) => auds.iter().any(|a| a == client_id),
    };
    if !audience_ok {
        return Err(OAuthError::IdToken("issued to another client (aud)"));
    }
    if claims.sub.is_empty() {
        return Err(OAuthError::IdToken("empty sub"));
    }
    Ok(GoogleIdentity {
        sub: claims.sub,
        email: claims.email,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn id_token_payload_is_read() {
        let token = jwt(
            r#"{"sub":"1001","email":"alice@example.com","aud":"cid","iss":"https://accounts.google.com"}"#,
        );
        assert_eq!(
            identity_from_id_token(&token, "cid").unwrap(),
            GoogleIdentity {
                sub: "1001".into(),
                email: Some("alice@example.com".into())
            }
        );
    }

    #[test]
    fn id_token_for_another_client_or_malformed_is_refused() {
        let google = r#""iss":"https://accounts.google.com""#;
        assert!(
            identity_from_id_token(
                &jwt(&format!(r#"{{"sub":"1","aud":"other",{google}}}"#)),
                "cid"
            )
            .is_err()
        );
        assert!(
            identity_from_id_token(&jwt(&format!(r#"{{"sub":"1",{google}}}"#)), "cid").is_err()
        );
        for iss in [
            None,
            Some("https://evil.example"),
            Some("https://accounts.google.com.evil"),
        ] {
            let iss = iss.map(|i| format!(r#","iss":"{i}""#)).unwrap_or_default();
            let token = jwt(&format!(r#"{{"sub":"1","aud":"cid"{iss}}}"#));
            assert!(identity_from_id_token(&token, "cid").is_err(), "{iss}");
        }
        assert!(
            identity_from_id_token(
                &jwt(r#"{"sub":"1","aud":"cid","iss":"accounts.google.com"}"#),
                "cid"
            )
            .is_ok()
        );
        assert!(identity_from_id_token(&jwt(r#"{"email":"x"}"#), "cid").is_err());
        assert!(identity_from_id_token("garbage", "cid").is_err());
        assert!(identity_from_id_token("a.!!!.c", "cid").is_err());
    }

    #[test]
    fn token_endpoint_errors_are_typed() {
        let parse = |body: &str| -> BasicErrorResponse { serde_json::from_str(body).unwrap() };
        assert!(matches!(
            token_error(RequestTokenError::ServerResponse(parse(
                r#"{"error":"invalid_grant","error_description":"Bad Request"}"#
            ))),
            OAuthError::InvalidGrant
        ));
        assert!(matches!(
            token_error(RequestTokenError::ServerResponse(parse(
                r#"{"error":"invalid_grant","error_description":"reauth related error (invalid_rapt)","error_uri":"https://support.google.com/a/answer/9368756","error_subtype":"invalid_rapt"}"#
            ))),
            OAuthError::InvalidRapt
        ));
        assert!(matches!(
            token_error(RequestTokenError::ServerResponse(parse(
                r#"{"error":"invalid_client"}"#
            ))),
            OAuthError::InvalidClient
        ));
        assert!(
            token_error(RequestTokenError::Request(TransportError::Status(503))).is_transient()
        );
        let rejected = token_error(RequestTokenError::ServerResponse(parse(
            r#"{"error":"invalid_request","error_description":"Missing code verifier."}"#,
        )));
        assert_eq!(
            rejected.to_string(),
            "Google's OAuth endpoint refused the request: invalid_request (Missing code verifier.)"
        );
    }

    /// A token endpoint that answers with a redirect: the client must not follow it (the code
    /// and client secret would go to wherever it points).
    #[tokio::test]
    async fn redirects_are_not_followed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut buffer = vec![0u8; 8192];
                let _ = socket.read(&mut buffer).await;
                seen.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{address}/elsewhere\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });

        let token_url = format!("http://{address}/token");
        let env = crate::config::test_variables(&[("GOOGLE_TOKEN_URL", &token_url)]);
        let config = Config::from_source(&env).unwrap();
        let secrets = Arc::new(SecretsCache::fixed(
            GoogleClient {
                client_id: "cid".into(),
                client_secret: SecretString::from("GOCSPX-s".to_string()),
            },
            crate::vault::Keyring::generate("k1"),
        ));
        let oauth = GoogleOAuth::new(&config, secrets);
        let error = oauth
            .refresh(&SecretString::from("1//rt".to_string()))
            .await
            .unwrap_err();
        assert!(matches!(error, OAuthError::Rejected { .. }), "{error}");
        assert_eq!(requests.load(Ordering::SeqCst), 1);
    }
}
