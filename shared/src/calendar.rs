//! The Google Calendar v3 events client: insert, update, delete, with Google's error bodies read into typed errors.
