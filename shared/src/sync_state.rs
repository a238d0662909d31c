//! Sync state: per event id, where it lives in Google, its status and the last applied stream sequence number.
