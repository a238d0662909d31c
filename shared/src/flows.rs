//! OAuth flow records: single-use `state`, the sealed PKCE verifier and the browser-binding hash, consumed by a conditional delete.
