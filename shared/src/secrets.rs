//! Secrets Manager: the Google client credentials and the token keyring, fetched once per cold start and cached with a bounded lifetime.
