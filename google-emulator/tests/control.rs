//! The control API: faults, latency, clock, stats, issued secrets, reset.

mod common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn queued_429_faults_answer_the_next_calls_then_calls_succeed() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    h.control_ok(
        "faults",
        json!({"target": "calendar", "status": 429, "reason": "rateLimitExceeded", "count": 2}),
    )
    .await;
    for _ in 0..2 {
        let (status, body) = h.insert(&token, timed_event("fault0001")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            body,
            json!({"error": {"errors": [{"domain": "usageLimits", "reason": "rateLimitExceeded",
                "message": "Rate Limit Exceeded"}], "code": 429, "message": "Rate Limit Exceeded"}})
        );
    }
    h.assert_insert(&token, "fault0001", StatusCode::OK).await;
    assert_eq!(
        h.stats().await["calendar"]["insert"],
        3,
        "faulted calls are counted"
    );
    let stored = h.stored(ALICE).await;
    assert_eq!(stored.len(), 1);
}

#[tokio::test]
async fn forbidden_rate_limits_use_googles_reasons() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    h.control_ok(
        "faults",
        json!({"target": "calendar", "status": 403, "reason": "userRateLimitExceeded"}),
    )
    .await;
    h.control_ok(
        "faults",
        json!({"target": "calendar", "status": 403, "reason": "rateLimitExceeded"}),
    )
    .await;
    let (status, body) = h.insert(&token, timed_event("fault0002")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        google_error(&body),
        (
            403,
            "userRateLimitExceeded".into(),
            "User Rate Limit Exceeded".into()
        )
    );
    assert_eq!(body["error"]["errors"][0]["domain"], "usageLimits");
    let (status, _, body) = h.event_call(Method::GET, &token, "fault0002", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        google_error(&body),
        (
            403,
            "rateLimitExceeded".into(),
            "Rate Limit Exceeded".into()
        )
    );
}

#[tokio::test]
async fn server_errors_can_be_queued() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    h.control_ok("faults", json!({"target": "calendar", "status": 500}))
        .await;
    h.control_ok("faults", json!({"target": "calendar", "status": 503}))
        .await;
    let (status, body) = h.insert(&token, timed_event("fault0003")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        google_error(&body),
        (500, "backendError".into(), "Backend Error".into())
    );
    let (status, body) = h.insert(&token, timed_event("fault0003")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], 503);
    h.assert_insert(&token, "fault0003", StatusCode::OK).await;
}

#[tokio::test]
async fn token_faults_hit_the_token_endpoint_only() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    h.control_ok("faults", json!({"target": "token", "status": 503}))
        .await;
    // Calendar calls are not affected.
    h.assert_insert(&tokens.access_token, "fault0004", StatusCode::OK)
        .await;
    let refresh = tokens.refresh_token.unwrap();
    assert_eq!(h.refresh(&refresh).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.refresh(&refresh).await.0, StatusCode::OK);
    assert_eq!(h.stats().await["token"]["refresh_token"], 2);
}

#[tokio::test]
async fn delay_alone_slows_the_answer_but_serves_it() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    h.control_ok("faults", json!({"target": "calendar", "delay_ms": 300}))
        .await;
    let started = Instant::now();
    h.assert_insert(&token, "s1o000001", StatusCode::OK).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_delay_longer_than_the_client_timeout_times_the_client_out() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    h.control_ok("faults", json!({"target": "calendar", "delay_ms": 5000}))
        .await;
    let result = h
        .http
        .post(h.url("calendar/v3/calendars/primary/events"))
        .bearer_auth(&token)
        .json(&timed_event("s1o000002"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(result.unwrap_err().is_timeout());
    // The fault was used up by the timed-out call.
    h.assert_insert(&token, "s1o000002", StatusCode::OK).await;
}

#[tokio::test]
async fn invalid_fault_requests_are_refused() {
    let h = Harness::start().await;
    for body in [
        json!({"target": "calendar"}),
        json!({"target": "nowhere", "status": 500}),
        json!({"target": "calendar", "status": 200}),
        json!({"target": "calendar", "status": 500, "count": 0}),
    ] {
        assert_eq!(
            h.control_post("faults", body.clone()).await.0,
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
}

#[tokio::test]
async fn clock_reports_and_advances_emulator_time() {
    let h = Harness::start().await;
    let before: DateTime<Utc> = h.now().await;
    assert!((before - Utc::now()).num_seconds().abs() < 60);
    let (status, body) = h
        .control_post("clock", json!({"advance_seconds": 7200}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let after: DateTime<Utc> = body["now"].as_str().unwrap().parse().unwrap();
    assert!((after - before).num_seconds() >= 7200);
    let now: DateTime<Utc> = h.now().await;
    assert!(now >= after);
}

#[tokio::test]
async fn stats_count_each_kind_of_call() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    let token = tokens.access_token.as_str();
    h.refresh(tokens.refresh_token.as_deref().unwrap()).await;
    h.insert(token, timed_event("stats0001")).await;
    h.event_call(Method::GET, token, "stats0001", None).await;
    h.event_call(
        Method::PATCH,
        token,
        "stats0001",
        Some(json!({"summary": "x"})),
    )
    .await;
    h.event_call(
        Method::PUT,
        token,
        "stats0001",
        Some(timed_event("stats0001")),
    )
    .await;
    h.event_call(Method::DELETE, token, "stats0001", None).await;
    h.revoke(token).await;
    assert_eq!(
        h.stats().await,
        json!({"token": {"authorization_code": 1, "refresh_token": 1}, "revoke": 1,
               "calendar": {"insert": 1, "update": 1, "patch": 1, "delete": 1, "get": 1, "list": 0,
                            "calendars_insert": 0, "calendars_get": 0, "calendars_delete": 0}})
    );
}

#[tokio::test]
async fn issued_secrets_lists_every_token_code_verifier_and_client_secret() {
    let h = Harness::start().await;
    let params = h.allow(&h.auth_url(&[]), ALICE).await;
    let code = param(&params, "code").unwrap();
    let (_, tokens) = h.exchange(&code, VERIFIER).await;
    let (_, refreshed) = h.refresh(tokens["refresh_token"].as_str().unwrap()).await;
    let values: Vec<String> =
        serde_json::from_value(h.control_get("issued-secrets").await["values"].clone()).unwrap();
    for secret in [
        code.as_str(),
        VERIFIER,
        CLIENT_SECRET,
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
        refreshed["access_token"].as_str().unwrap(),
    ] {
        assert!(values.iter().any(|v| v == secret), "{secret} missing");
    }
}

#[tokio::test]
async fn reset_clears_state_but_keeps_clients_and_default_accounts() {
    let h = Harness::start().await;
    h.control_ok("accounts", json!({"email": "carol@example.com"}))
        .await;
    let tokens = h.connect(ALICE).await;
    h.insert(&tokens.access_token, timed_event("reset0001"))
        .await;
    h.control_ok("faults", json!({"target": "calendar", "status": 500}))
        .await;
    h.advance_clock(100000).await;
    h.control_ok("reset", json!({})).await;
    let stored = h.stored(ALICE).await;
    assert!(stored.is_empty());
    // Old tokens are gone.
    h.assert_insert(&tokens.access_token, "reset0002", StatusCode::UNAUTHORIZED)
        .await;
    assert_eq!(
        h.stats().await["calendar"]["insert"],
        1,
        "stats restart (this insert only)"
    );
    assert_eq!(
        h.consent(&h.auth_url(&[]), "carol@example.com", "allow")
            .await
            .0,
        StatusCode::BAD_REQUEST,
        "added accounts are gone"
    );
    let fresh = h.connect(ALICE).await;
    assert!(fresh.refresh_token.is_some());
    // Fault queue was cleared.
    h.assert_insert(&fresh.access_token, "reset0003", StatusCode::OK)
        .await;
    let now: DateTime<Utc> = h.now().await;
    assert!(
        (now - Utc::now()).num_seconds().abs() < 60,
        "clock is back to real time"
    );
}

#[tokio::test]
async fn control_requests_with_bad_json_are_400() {
    let h = Harness::start().await;
    let response = h
        .http
        .post(h.url("__emulator/clients"))
        .header("content-type", "application/json")
        .body("{\"client_id\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let h = Harness::start().await;
    let url = h.url("__emulator/clock");
    let http = h.http.clone();
    assert!(http.get(url.clone()).send().await.is_ok());
    h.emu.shutdown().await;
    let fresh = reqwest::Client::new();
    assert!(fresh.get(url).send().await.is_err());
}

#[tokio::test]
async fn expiring_or_revoking_an_unknown_account_is_refused() {
    let h = Harness::start().await;
    for path in ["expire-access-tokens", "revoke"] {
        let (status, body) = h
            .control_post(path, json!({"email": "nobody@example.com"}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
}
