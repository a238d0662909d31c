//! The app's Events rows: their validation and their mapping to Google's Event resource and deterministic event id.
