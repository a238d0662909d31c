//! `google_oauth::GoogleOAuth` against the Google emulator over HTTP: code exchange, refresh,
//! revoke, and how each failure of the token endpoint is typed (the sync's retry and
//! `needs_reauth` decisions rest on these). Each test ends with the leak scan (no tables or
//! lifecycle events of its own: what it scans are the log lines and panic messages).

use std::{sync::Arc, time::Duration};

use calsync::{
    config::Config,
    google_oauth::{self, GoogleOAuth, OAuthError},
    secrets::{GoogleClient, SecretsCache},
    vault::Keyring,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use testkit::TestStack;

mod common;

struct Google {
    stack: TestStack,
    config: Config,
}

impl Google {
    async fn start() -> Self {
        let (stack, config, _) = common::stack_with_config().await;
        Self { stack, config }
    }

    fn oauth_with(&self, client_secret: &str, timeout: Duration) -> GoogleOAuth {
        let secrets = Arc::new(SecretsCache::fixed(
            GoogleClient {
                client_id: self.stack.client_id.clone(),
                client_secret: SecretString::from(client_secret.to_string()),
            },
            Keyring::generate("k1"),
        ));
        GoogleOAuth::with_http_client(&self.config, secrets, google_oauth::http_client(timeout))
    }

    fn oauth(&self) -> GoogleOAuth {
        self.oauth_with(&self.stack.client_secret, google_oauth::REQUEST_TIMEOUT)
    }

    async fn control(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.stack.control_post(path, &body).await.unwrap();
        assert!(status.is_success(), "{path}");
        answer
    }

    /// A consent by `account` and the code it yields, with the verifier that goes with it.
    async fn code(&self, oauth: &GoogleOAuth, account: &str) -> (SecretString, SecretString) {
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        let url = oauth
            .authorization_url(&self.config.oauth.scopes, "state-1", challenge)
            .await
            .unwrap();
        let redirect = self
            .stack
            .consent(url.as_str(), account, "allow", &[])
            .await
            .unwrap();
        let code = redirect
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .into_owned();
        (
            SecretString::from(code),
            SecretString::from(verifier.secret().clone()),
        )
    }

    async fn refresh_token(&self, oauth: &GoogleOAuth) -> SecretString {
        let (code, verifier) = self.code(oauth, "alice@example.com").await;
        let exchange = oauth.exchange_code(&code, &verifier).await.unwrap();
        exchange.refresh_token.expect("a refresh token")
    }
}

#[tokio::test]
async fn code_exchange_gives_tokens_and_identity() {
    let g = Google::start().await;
    let oauth = g.oauth();
    let (code, verifier) = g.code(&oauth, "bob@example.com").await;
    let exchange = oauth.exchange_code(&code, &verifier).await.unwrap();
    assert!(exchange.refresh_token.is_some());
    let identity = exchange.identity.unwrap();
    assert_eq!(identity.sub, "100000000000000000002");
    assert_eq!(identity.email.as_deref(), Some("bob@example.com"));
    assert!(exchange.expires_at > chrono::Utc::now() + chrono::Duration::minutes(50));
    assert!(
        exchange
            .scopes
            .unwrap()
            .iter()
            .any(|s| s.ends_with("calendar.events.owned"))
    );
    // A code works once.
    assert!(matches!(
        oauth.exchange_code(&code, &verifier).await,
        Err(OAuthError::InvalidGrant)
    ));
    common::assert_nothing_leaked(&g.stack, &[]).await;
}

#[tokio::test]
async fn a_wrong_verifier_is_refused() {
    let g = Google::start().await;
    let oauth = g.oauth();
    let (code, _) = g.code(&oauth, "alice@example.com").await;
    let wrong = SecretString::from(calsync::flows::random_token());
    let error = oauth.exchange_code(&code, &wrong).await.unwrap_err();
    assert!(matches!(error, OAuthError::InvalidGrant), "{error}");
    common::assert_nothing_leaked(&g.stack, &[]).await;
}

#[tokio::test]
async fn refresh_gives_a_new_access_token() {
    let g = Google::start().await;
    let oauth = g.oauth();
    let refresh_token = g.refresh_token(&oauth).await;
    g.control("settings", json!({"access_token_lifetime_seconds": 120}))
        .await;
    let refreshed = oauth.refresh(&refresh_token).await.unwrap();
    assert!(!refreshed.access_token.expose_secret().is_empty());
    let lifetime = refreshed.expires_at - chrono::Utc::now();
    assert!(lifetime <= chrono::Duration::seconds(120) && lifetime > chrono::Duration::seconds(60));
    common::assert_nothing_leaked(&g.stack, &[]).await;
}

#[tokio::test]
async fn token_endpoint_failures_are_typed() {
    let g = Google::start().await;
    let oauth = g.oauth();
    let refresh_token = g.refresh_token(&oauth).await;

    for status in [500, 503, 429] {
        g.control(
            "faults",
            json!({"target": "token", "status": status, "count": 1}),
        )
        .await;
        let error = oauth.refresh(&refresh_token).await.unwrap_err();
        assert!(error.is_transient(), "{status}: {error}");
        assert!(!error.to_string().contains(refresh_token.expose_secret()));
    }
    // The faults were used up: the token still works.
    oauth.refresh(&refresh_token).await.unwrap();

    // Slower than the client's timeout: transient.
    g.control(
        "faults",
        json!({"target": "token", "delay_ms": 1500, "count": 1}),
    )
    .await;
    let impatient = g.oauth_with(&g.stack.client_secret, Duration::from_millis(300));
    let error = impatient.refresh(&refresh_token).await.unwrap_err();
    assert!(error.is_transient(), "{error}");

    // A wrong client secret.
    let wrong_client = g.oauth_with("GOCSPX-not-the-secret", google_oauth::REQUEST_TIMEOUT);
    assert!(matches!(
        wrong_client.refresh(&refresh_token).await,
        Err(OAuthError::InvalidClient)
    ));

    // The user removed the app's access in their Google account.
    g.control("revoke", json!({"email": "alice@example.com"}))
        .await;
    assert!(matches!(
        oauth.refresh(&refresh_token).await,
        Err(OAuthError::InvalidGrant)
    ));
    common::assert_nothing_leaked(&g.stack, &[]).await;
}

#[tokio::test]
async fn revoke_kills_the_grant_and_is_idempotent() {
    let g = Google::start().await;
    let oauth = g.oauth();
    let refresh_token = g.refresh_token(&oauth).await;
    oauth.revoke(&refresh_token).await.unwrap();
    assert!(matches!(
        oauth.refresh(&refresh_token).await,
        Err(OAuthError::InvalidGrant)
    ));
    // Google answers invalid_token for a token it no longer knows: that is revoked too.
    oauth.revoke(&refresh_token).await.unwrap();

    // A token Google never issued is answered invalid_token, which also counts as revoked.
    let another = SecretString::from("1//not-a-token".to_string());
    oauth.revoke(&another).await.unwrap();
    common::assert_nothing_leaked(&g.stack, &[]).await;
}
