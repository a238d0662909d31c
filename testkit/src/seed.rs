//! The two secrets of the stack: the Google OAuth client, in the JSON shape Google lets you
//! download for a web client, and a token keyring of fresh 32-byte AES keys.

use anyhow::{Context as _, Result};
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde_json::json;
use url::Url;

/// Google's downloaded `client_secret_*.json` for a web application, pointing at `google_base`.
pub fn google_client_json(
    client_id: &str,
    client_secret: &str,
    google_base: &Url,
    redirect_uris: &[&str],
    javascript_origins: &[&str],
) -> Result<String> {
    Ok(json!({
        "web": {
            "client_id": client_id,
            "project_id": "calsync-local",
            "auth_uri": google_base.join("o/oauth2/v2/auth")?.as_str(),
            "token_uri": google_base.join("token")?.as_str(),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_secret": client_secret,
            "redirect_uris": redirect_uris,
            "javascript_origins": javascript_origins,
        }
    })
    .to_string())
}

/// A keyring with one fresh key: `{"current": id, "keys": {id: base64(32 random bytes)}}`.
pub fn generate_keyring() -> String {
    let mut key = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    let id = format!("local-{}", random_token(8));
    json!({ "current": id, "keys": { id.clone(): STANDARD.encode(key) } }).to_string()
}

/// Random names and client secrets look like Google's opaque tokens (letters, digits, `-`, `_`),
/// which every local resource name accepts.
pub use google_emulator::state::random_token;

/// Creates the secret `name` with `value`, or puts `value` as its new version if it exists.
pub async fn upsert_secret(client: &Client, name: &str, value: &str) -> Result<()> {
    match client
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(error) if error.code() == Some("ResourceExistsException") => {
            client
                .put_secret_value()
                .secret_id(name)
                .secret_string(value)
                .send()
                .await
                .map_err(aws_sdk_secretsmanager::Error::from)
                .with_context(|| format!("updating secret {name}"))?;
            Ok(())
        }
        Err(error) => Err(aws_sdk_secretsmanager::Error::from(error))
            .with_context(|| format!("creating secret {name}")),
    }
}
