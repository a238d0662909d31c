//! Grants: one item per app user holding the sealed Google tokens, written with optimistic versioning.
