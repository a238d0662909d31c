//! The Google OAuth 2.0 client (on the `oauth2` crate): authorization URL with PKCE, code exchange, refresh and revoke, errors typed.
