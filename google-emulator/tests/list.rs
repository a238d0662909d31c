//! `events.list` over HTTP: Google's paging (`maxResults`, `nextPageToken`/`pageToken`), the
//! `privateExtendedProperty` filter, `showDeleted`, and its refusals.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Inserts `id` with the private properties `private` into Alice's primary calendar.
async fn put(h: &Harness, token: &str, id: &str, private: Value) {
    let mut event = timed_event(id);
    event["extendedProperties"] = json!({ "private": private });
    let (status, body) = h.insert(token, event).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn list(h: &Harness, token: &str, query: &str) -> (StatusCode, Value) {
    let path = format!("calendars/primary/events?{query}");
    let (status, _, body) = h.calendar(Method::GET, &path, Some(token), None).await;
    (status, body)
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn pages_follow_next_page_token_until_it_is_absent() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    for i in 0..5 {
        put(&h, &token, &format!("page0000{i}"), json!({"calsync": "1"})).await;
    }
    let (mut seen, mut query, mut pages) = (Vec::new(), "maxResults=2".to_string(), 0);
    loop {
        let (status, page) = list(&h, &token, &query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["kind"], "calendar#events");
        assert!(ids(&page).len() <= 2);
        seen.extend(ids(&page));
        pages += 1;
        match page["nextPageToken"].as_str() {
            Some(next) => query = format!("maxResults=2&pageToken={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..5).map(|i| format!("page0000{i}")).collect();
    assert_eq!(seen, expected, "every event once, in a stable order");
    assert_eq!(h.stats().await["calendar"]["list"], 3);

    // Without maxResults, Google's default page (250) holds all five and no token follows.
    let (_, page) = list(&h, &token, "").await;
    assert_eq!(ids(&page).len(), 5);
    assert!(page.get("nextPageToken").is_none());
}

#[tokio::test]
async fn private_extended_property_constraints_must_all_match() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    put(
        &h,
        &token,
        "mine00001",
        json!({"calsync": "1", "calsync_event_id": "a"}),
    )
    .await;
    put(
        &h,
        &token,
        "mine00002",
        json!({"calsync": "1", "calsync_event_id": "b"}),
    )
    .await;
    put(&h, &token, "theirs001", json!({"calsync": "2"})).await;
    put(&h, &token, "theirs002", json!({})).await;

    let (_, page) = list(&h, &token, "privateExtendedProperty=calsync%3D1").await;
    assert_eq!(ids(&page), ["mine00001", "mine00002"]);
    let (_, page) = list(
        &h,
        &token,
        "privateExtendedProperty=calsync%3D1&privateExtendedProperty=calsync_event_id%3Db",
    )
    .await;
    assert_eq!(ids(&page), ["mine00002"]);
    let (status, body) = list(&h, &token, "privateExtendedProperty=calsync").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(google_error(&body).1, "invalid");
}

#[tokio::test]
async fn cancelled_events_are_listed_only_with_show_deleted() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    put(&h, &token, "kept00001", json!({"calsync": "1"})).await;
    put(&h, &token, "gone00001", json!({"calsync": "1"})).await;
    let (status, _, _) = h
        .calendar(
            Method::DELETE,
            "calendars/primary/events/gone00001",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let (_, page) = list(&h, &token, "privateExtendedProperty=calsync%3D1").await;
    assert_eq!(ids(&page), ["kept00001"]);
    let (_, page) = list(
        &h,
        &token,
        "privateExtendedProperty=calsync%3D1&showDeleted=true",
    )
    .await;
    assert_eq!(ids(&page), ["gone00001", "kept00001"]);
    assert_eq!(page["items"][0]["status"], "cancelled");
}

#[tokio::test]
async fn malformed_paging_parameters_and_missing_credentials_are_refused() {
    let h = Harness::start().await;
    let token = h.connect(ALICE).await.access_token;
    for query in ["maxResults=0", "maxResults=many", "pageToken=%%%"] {
        let (status, body) = list(&h, &token, query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(google_error(&body).1, "invalid", "{query}");
    }
    let (status, _, body) = h
        .calendar(Method::GET, "calendars/primary/events", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(google_error(&body).1, "required");
    let (status, _, _) = h
        .calendar(
            Method::GET,
            "calendars/nobody@example.com/events",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
