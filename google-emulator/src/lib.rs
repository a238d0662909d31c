//! A local stand-in for Google's OAuth 2.0 and Calendar v3 endpoints.
