//! The emulator speaks to the `oauth2` crate (what calsync uses) the way Google does: HTTP Basic
//! client authentication with URL-encoded credentials, PKCE S256, refresh, revoke, error types.

mod common;

use common::*;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, PkceCodeChallenge, RedirectUrl,
    RequestTokenError, Scope, TokenResponse, TokenUrl,
};
use serde_json::json;

/// oauth2's HTTP client over the harness's reqwest client, as the crate's own `reqwest` feature
/// wires it (that feature would turn on for every build of the workspace, not only this test).
async fn send(
    http: &reqwest::Client,
    request: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, reqwest::Error> {
    let response = http.execute(request.try_into()?).await?;
    let mut answer = oauth2::http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        answer = answer.header(name, value);
    }
    Ok(answer
        .body(response.bytes().await?.to_vec())
        .expect("a status and headers that came from a response"))
}

const ODD_CLIENT_ID: &str = "456-odd.apps.googleusercontent.com";
const ODD_SECRET: &str = "GOCSPX-a+b/c=d%e:f";

#[tokio::test]
async fn oauth2_crate_round_trip_with_basic_auth_and_pkce() {
    let h = Harness::start().await;
    h.control_post(
        "clients",
        json!({"client_id": ODD_CLIENT_ID, "client_secret": ODD_SECRET, "redirect_uris": [REDIRECT_URI]}),
    )
    .await;
    let client = BasicClient::new(ClientId::new(ODD_CLIENT_ID.into()))
        .set_client_secret(ClientSecret::new(ODD_SECRET.into()))
        .set_auth_uri(AuthUrl::from_url(h.url("o/oauth2/v2/auth")))
        .set_token_uri(TokenUrl::from_url(h.url("token")))
        .set_redirect_uri(RedirectUrl::new(REDIRECT_URI.into()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .add_scope(Scope::new(CALENDAR_SCOPE.into()))
        .add_extra_param("access_type", "offline")
        .set_pkce_challenge(challenge)
        .url();
    let params = h.allow(url.as_str(), ALICE).await;
    assert_eq!(
        param(&params, "state").as_deref(),
        Some(state.secret().as_str())
    );
    let code = param(&params, "code").unwrap();

    let token = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(verifier)
        .request_async(&|request| send(&h.http, request))
        .await
        .expect("code exchange");
    assert!(token.access_token().secret().starts_with("ya29."));
    assert!(token.expires_in().is_some());
    let refresh = token.refresh_token().expect("offline access").clone();
    assert!(
        token
            .scopes()
            .unwrap()
            .iter()
            .any(|s| s.as_str() == CALENDAR_SCOPE)
    );

    let refreshed = client
        .exchange_refresh_token(&refresh)
        .request_async(&|request| send(&h.http, request))
        .await
        .expect("refresh");
    assert!(refreshed.refresh_token().is_none());

    // oauth2's own revoke refuses http:// URLs (the emulator's), so revoke like calsync does:
    // a form POST of the token.
    let response = h
        .http
        .post(h.url("revoke"))
        .form(&[("token", refresh.secret().as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    match client
        .exchange_refresh_token(&refresh)
        .request_async(&|request| send(&h.http, request))
        .await
    {
        Err(RequestTokenError::ServerResponse(error)) => {
            assert_eq!(error.error(), &BasicErrorResponseType::InvalidGrant);
            assert_eq!(
                error.error_description().map(String::as_str),
                Some("Token has been expired or revoked.")
            );
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
    let replay = client
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(oauth2::PkceCodeVerifier::new(VERIFIER.into()))
        .request_async(&|request| send(&h.http, request))
        .await;
    match replay {
        Err(RequestTokenError::ServerResponse(error)) => {
            assert_eq!(error.error(), &BasicErrorResponseType::InvalidGrant)
        }
        other => panic!("expected invalid_grant, got {other:?}"),
    }
}

#[tokio::test]
async fn oauth2_crate_sees_invalid_client_for_a_wrong_secret() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    let client = BasicClient::new(ClientId::new(CLIENT_ID.into()))
        .set_client_secret(ClientSecret::new("wrong".into()))
        .set_token_uri(TokenUrl::from_url(h.url("token")));
    let refresh = oauth2::RefreshToken::new(tokens.refresh_token.unwrap());
    match client
        .exchange_refresh_token(&refresh)
        .request_async(&|request| send(&h.http, request))
        .await
    {
        Err(RequestTokenError::ServerResponse(error)) => {
            assert_eq!(error.error(), &BasicErrorResponseType::InvalidClient)
        }
        other => panic!("expected invalid_client, got {other:?}"),
    }
}
