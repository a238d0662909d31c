//! The token vault: AES-256-GCM sealing of tokens and verifiers, bound to table, user, key id and format version.
