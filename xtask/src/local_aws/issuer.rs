//! The local stack's stand-in for the app's identity provider: an RS256 key of the stack's own
//! (generated once into `.dev/`, which git ignores), the JWTs it signs for an app user, and the
//! discovery document and JWKS that API Gateway's JWT authorizer fetches from the issuer
//! (`{issuer}/.well-known/openid-configuration`, then its `jwks_uri`).
//!
//! The key and the tokens stay in `xtask`: no function links this module's crates.

use std::path::Path;

use anyhow::{Context as _, Result};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use secrecy::SecretString;
use serde_json::{Value, json};

/// How long a minted token lives.
pub const TOKEN_LIFETIME_SECS: i64 = 3600;

/// Where the discovery document is, relative to the issuer URL.
pub const DISCOVERY_PATH: &str = ".well-known/openid-configuration";
/// Where this issuer serves its JWKS, relative to the issuer URL.
pub const JWKS_PATH: &str = ".well-known/jwks.json";

/// A signing key and what an authorizer needs to check its tokens.
#[derive(Clone)]
pub struct Issuer {
    /// The `iss` claim, e.g. `http://127.0.0.1:3001` (no trailing slash, as identity providers
    /// write it).
    pub issuer: String,
    key: EncodingKey,
    /// The public key as a JWK (`kty`, `n`, `e`, `kid`, `alg`, `use`).
    jwk: Value,
}

impl Issuer {
    /// The key at `path` (PKCS#1 PEM), generated there on first use, for tokens of `issuer`.
    pub fn load_or_create(path: &Path, issuer: &str) -> Result<Self> {
        let key = match std::fs::read_to_string(path) {
            Ok(pem) => rsa::RsaPrivateKey::from_pkcs1_pem(&pem)
                .with_context(|| format!("reading the issuer key {}", path.display()))?,
            Err(_) => {
                let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
                let pem = key.to_pkcs1_pem(LineEnding::LF)?;
                write_private(path, pem.as_bytes())?;
                key
            }
        };
        Self::from_key(&key, issuer)
    }

    /// An issuer whose key lives only in memory (tests).
    pub fn ephemeral(issuer: &str) -> Result<Self> {
        Self::from_key(
            &rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?,
            issuer,
        )
    }

    fn from_key(key: &rsa::RsaPrivateKey, issuer: &str) -> Result<Self> {
        let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
        // A stable key id: the modulus is unique to the key.
        let kid = format!("local-{}", &n[..16]);
        Ok(Self {
            issuer: issuer.trim_end_matches('/').to_string(),
            key: EncodingKey::from_rsa_der(key.to_pkcs1_der()?.as_bytes()),
            jwk: json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e}),
        })
    }

    /// A token for `sub` with `audience`, valid from now for [`TOKEN_LIFETIME_SECS`].
    pub fn mint(&self, sub: &str, audience: &str) -> Result<SecretString> {
        let now = chrono::Utc::now().timestamp();
        self.sign(&json!({
            "iss": self.issuer, "sub": sub, "aud": audience,
            "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME_SECS,
        }))
    }

    /// Any claims, signed with this issuer's key (tests craft wrong ones with it).
    pub fn sign(&self, claims: &Value) -> Result<SecretString> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.jwk["kid"].as_str().map(str::to_string);
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?.into())
    }

    /// `{"keys": [..]}`.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// The OpenID discovery document: where the JWKS is.
    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/{JWKS_PATH}", self.issuer),
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}
