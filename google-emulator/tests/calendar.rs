//! Calendar v3 events behaviour, over HTTP with tokens from the emulator's own token endpoint.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Google's 404 for a calendar or event that is not there (`what` names the case).
fn assert_not_found(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::NOT_FOUND, "{what}");
    assert_eq!(google_error(body).1, "notFound", "{what}");
}

async fn alice() -> (Harness, String) {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    (h, tokens.access_token)
}

#[tokio::test]
async fn insert_with_client_id_stores_and_returns_the_full_event() {
    let (h, token) = alice().await;
    let (status, event) = h.insert(&token, timed_event("abcdef0123")).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["id"], "abcdef0123");
    assert_eq!(event["kind"], "calendar#event");
    assert_eq!(event["status"], "confirmed");
    assert_eq!(event["summary"], "Standup");
    assert_eq!(event["description"], "Daily");
    assert_eq!(event["location"], "Room 1");
    assert_eq!(event["start"]["timeZone"], "Europe/Berlin");
    assert_eq!(
        event["extendedProperties"]["private"]["calsync_event_id"],
        "evt-1"
    );
    assert_eq!(event["iCalUID"], "abcdef0123@google.com");
    assert_eq!(event["sequence"], 0);
    assert_eq!(event["creator"]["email"], ALICE);
    assert_eq!(event["organizer"]["email"], ALICE);
    assert!(event["etag"].as_str().unwrap().starts_with('"'));
    assert!(
        event["htmlLink"]
            .as_str()
            .unwrap()
            .starts_with("https://www.google.com/calendar/event?eid=")
    );
    assert!(event["created"].as_str().unwrap().ends_with('Z'));
    let stored = h.stored(ALICE).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0], event);
    assert_eq!(h.stats().await["calendar"]["insert"], 1);
}

#[tokio::test]
async fn unknown_top_level_fields_are_ignored_and_server_fields_are_not_taken_from_clients() {
    let (h, token) = alice().await;
    let mut body = timed_event("unkn0001");
    body["madeUpField"] = json!(42);
    body["created"] = json!("2000-01-01T00:00:00.000Z");
    body["creator"] = json!({"email": "mallory@example.com"});
    let (status, event) = h.insert(&token, body).await;
    assert_eq!(status, StatusCode::OK);
    assert!(event.get("madeUpField").is_none());
    assert_ne!(event["created"], "2000-01-01T00:00:00.000Z");
    assert_eq!(event["creator"]["email"], ALICE);
}

#[tokio::test]
async fn insert_without_id_generates_a_base32hex_id() {
    let (h, token) = alice().await;
    let mut body = timed_event("x");
    body.as_object_mut().unwrap().remove("id");
    let (status, event) = h.insert(&token, body).await;
    assert_eq!(status, StatusCode::OK);
    let id = event["id"].as_str().unwrap();
    assert!(
        id.len() >= 5 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'v')),
        "{id}"
    );
}

#[tokio::test]
async fn ids_outside_base32hex_or_length_are_invalid_resource_id() {
    let (h, token) = alice().await;
    let too_long = "a".repeat(1025);
    for id in ["abcd", "ABCDEF", "abcdefw", "abc-def", too_long.as_str()] {
        let (status, body) = h.insert(&token, timed_event(id)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id}");
        assert_eq!(
            google_error(&body),
            (
                400,
                "invalid".to_owned(),
                "Invalid resource id value.".to_owned()
            )
        );
    }
    let longest = "v".repeat(1024);
    for id in ["abcde", longest.as_str()] {
        assert_eq!(
            h.insert(&token, timed_event(id)).await.0,
            StatusCode::OK,
            "{id}"
        );
    }
}

#[tokio::test]
async fn inserting_an_existing_id_is_409_duplicate_also_after_delete() {
    let (h, token) = alice().await;
    h.insert(&token, timed_event("dup000001")).await;
    let (status, body) = h.insert(&token, timed_event("dup000001")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        body,
        json!({"error": {"errors": [{"domain": "global", "reason": "duplicate",
            "message": "The requested identifier already exists."}],
            "code": 409, "message": "The requested identifier already exists."}})
    );
    let (status, _, _) = h
        .event_call(Method::DELETE, &token, "dup000001", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    h.assert_insert(&token, "dup000001", StatusCode::CONFLICT)
        .await;
}

#[tokio::test]
async fn get_returns_the_event_and_404_for_unknown() {
    let (h, token) = alice().await;
    let (_, inserted) = h.insert(&token, timed_event("get000001")).await;
    let (status, _, event) = h.event_call(Method::GET, &token, "get000001", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event, inserted);
    let (status, _, body) = h.event_call(Method::GET, &token, "nothere01", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        google_error(&body),
        (404, "notFound".to_owned(), "Not Found".to_owned())
    );
    assert_eq!(h.stats().await["calendar"]["get"], 2);
}

#[tokio::test]
async fn the_account_email_names_the_primary_calendar() {
    let (h, token) = alice().await;
    h.insert(&token, timed_event("email0001")).await;
    let (status, _, _) = h
        .calendar(
            Method::GET,
            "calendars/alice%40example.com/events/email0001",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_and_other_accounts_calendars_are_404() {
    let (h, token) = alice().await;
    for calendar in ["nope%40group.calendar.google.com", "bob%40example.com"] {
        let (status, _, body) = h
            .calendar(
                Method::POST,
                &format!("calendars/{calendar}/events"),
                Some(&token),
                Some(timed_event("other0001")),
            )
            .await;
        assert_not_found(status, &body, "{calendar}");
    }
}

#[tokio::test]
async fn a_secondary_calendar_made_through_control_is_separate_from_primary() {
    let (h, token) = alice().await;
    h.control_ok(
        "calendars",
        json!({"email": ALICE, "calendar_id": "team@group.calendar.google.com"}),
    )
    .await;
    let (status, _, _) = h
        .calendar(
            Method::POST,
            "calendars/team%40group.calendar.google.com/events",
            Some(&token),
            Some(timed_event("second001")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let team = h
        .control
        .calendar_events(ALICE, "team@group.calendar.google.com")
        .await
        .unwrap();
    assert_eq!(team.len(), 1);
    let primary = h.stored(ALICE).await;
    assert!(primary.is_empty());
}

#[tokio::test]
async fn update_replaces_fields_and_bumps_sequence_updated_and_etag() {
    let (h, token) = alice().await;
    let (_, inserted) = h.insert(&token, timed_event("upd000001")).await;
    h.advance_clock(5).await;
    let body = json!({
        "summary": "Renamed",
        "start": {"date": "2026-12-02"},
        "end": {"date": "2026-12-03"},
    });
    let (status, _, event) = h
        .event_call(Method::PUT, &token, "upd000001", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["summary"], "Renamed");
    assert!(
        event.get("description").is_none(),
        "update replaces: {event}"
    );
    assert!(event.get("extendedProperties").is_none());
    assert_eq!(event["start"], json!({"date": "2026-12-02"}));
    assert_eq!(event["sequence"], 1);
    assert_ne!(event["etag"], inserted["etag"]);
    assert_ne!(event["updated"], inserted["updated"]);
    assert_eq!(event["created"], inserted["created"]);
    assert_eq!(event["iCalUID"], inserted["iCalUID"]);
    assert_eq!(h.stats().await["calendar"]["update"], 1);
}

#[tokio::test]
async fn update_of_a_cancelled_event_revives_it() {
    let (h, token) = alice().await;
    h.insert(&token, timed_event("revive001")).await;
    h.event_call(Method::DELETE, &token, "revive001", None)
        .await;
    let (status, _, event) = h
        .event_call(
            Method::PUT,
            &token,
            "revive001",
            Some(timed_event("revive001")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["status"], "confirmed");
}

#[tokio::test]
async fn update_and_patch_of_unknown_event_are_404() {
    let (h, token) = alice().await;
    for method in [Method::PUT, Method::PATCH] {
        let event = Some(timed_event("missing01"));
        let (status, _, body) = h
            .event_call(method.clone(), &token, "missing01", event)
            .await;
        assert_not_found(status, &body, "{method}");
    }
}

#[tokio::test]
async fn patch_merges_into_the_event() {
    let (h, token) = alice().await;
    h.insert(&token, timed_event("patch0001")).await;
    let body = json!({
        "summary": "Patched",
        "location": null,
        "extendedProperties": {"private": {"extra": "1"}},
    });
    let (status, _, event) = h
        .event_call(Method::PATCH, &token, "patch0001", Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["summary"], "Patched");
    assert_eq!(event["description"], "Daily");
    assert!(event.get("location").is_none());
    assert_eq!(
        event["extendedProperties"]["private"]["calsync_event_id"],
        "evt-1"
    );
    assert_eq!(event["extendedProperties"]["private"]["extra"], "1");
    assert_eq!(event["sequence"], 1);
    assert_eq!(h.stats().await["calendar"]["patch"], 1);
}

#[tokio::test]
async fn patch_that_breaks_the_time_range_is_refused_and_changes_nothing() {
    let (h, token) = alice().await;
    let (_, inserted) = h.insert(&token, timed_event("patch0002")).await;
    let body = json!({"end": {"dateTime": "2026-12-01T08:00:00+01:00"}});
    let (status, _, error) = h
        .event_call(Method::PATCH, &token, "patch0002", Some(body))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(google_error(&error).1, "timeRangeEmpty");
    let (_, _, event) = h.event_call(Method::GET, &token, "patch0002", None).await;
    assert_eq!(event, inserted);
}

#[tokio::test]
async fn delete_cancels_then_410_then_404_for_unknown() {
    let (h, token) = alice().await;
    h.insert(&token, timed_event("del000001")).await;
    let (status, _, body) = h
        .event_call(Method::DELETE, &token, "del000001", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    let stored = h.stored(ALICE).await;
    assert_eq!(stored[0]["status"], "cancelled");
    let (status, _, event) = h.event_call(Method::GET, &token, "del000001", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["status"], "cancelled");
    let (status, _, body) = h
        .event_call(Method::DELETE, &token, "del000001", None)
        .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(
        google_error(&body),
        (
            410,
            "deleted".to_owned(),
            "Resource has been deleted".to_owned()
        )
    );
    let (status, _, body) = h
        .event_call(Method::DELETE, &token, "never0001", None)
        .await;
    assert_not_found(status, &body, "");
    assert_eq!(h.stats().await["calendar"]["delete"], 3);
}

#[tokio::test]
async fn list_hides_cancelled_events_unless_show_deleted() {
    let (h, token) = alice().await;
    h.insert(&token, timed_event("list00001")).await;
    h.insert(&token, timed_event("list00002")).await;
    h.event_call(Method::DELETE, &token, "list00002", None)
        .await;
    let (status, _, body) = h
        .calendar(Method::GET, "calendars/primary/events", Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let (_, _, body) = h
        .calendar(
            Method::GET,
            "calendars/primary/events?showDeleted=true",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
}

const INVALID_CREDENTIALS: &str = "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.";

fn assert_invalid_credentials(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
) {
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert_eq!(
        body,
        &json!({"error": {"code": 401, "message": INVALID_CREDENTIALS,
            "errors": [{"message": "Invalid Credentials", "domain": "global", "reason": "authError",
                "location": "Authorization", "locationType": "header"}],
            "status": "UNAUTHENTICATED"}})
    );
}

#[tokio::test]
async fn unknown_token_is_401_with_googles_body() {
    let (h, _) = alice().await;
    let (status, headers, body) = h
        .calendar(
            Method::POST,
            "calendars/primary/events",
            Some("ya29.forged"),
            Some(timed_event("auth00001")),
        )
        .await;
    assert_invalid_credentials(status, &headers, &body);
}

#[tokio::test]
async fn missing_token_is_401_login_required() {
    let (h, _) = alice().await;
    let (status, headers, body) = h
        .calendar(
            Method::GET,
            "calendars/primary/events/auth00001",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.contains_key("www-authenticate"));
    assert_eq!(body["error"]["status"], "UNAUTHENTICATED");
    assert_eq!(body["error"]["errors"][0]["reason"], "required");
}

#[tokio::test]
async fn expired_token_via_clock_is_401_and_a_refreshed_one_works() {
    let (h, token) = alice().await;
    h.assert_insert(&token, "clock0001", StatusCode::OK).await;
    h.advance_clock(3600).await;
    let (status, headers, body) = h.event_call(Method::GET, &token, "clock0001", None).await;
    assert_invalid_credentials(status, &headers, &body);
}

#[tokio::test]
async fn expire_access_tokens_control_makes_calls_401_but_refresh_still_works() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    let bob = h.connect(BOB).await;
    h.control_ok("expire-access-tokens", json!({"email": ALICE}))
        .await;
    let (status, headers, body) = h
        .calendar(
            Method::POST,
            "calendars/primary/events",
            Some(&tokens.access_token),
            Some(timed_event("e0e000001")),
        )
        .await;
    assert_invalid_credentials(status, &headers, &body);
    // Other accounts keep working.
    h.assert_insert(&bob.access_token, "e0e000001", StatusCode::OK)
        .await;
    let (status, refreshed) = h.refresh(tokens.refresh_token.as_deref().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    h.assert_insert(
        refreshed["access_token"].as_str().unwrap(),
        "e0e000001",
        StatusCode::OK,
    )
    .await;
}

#[tokio::test]
async fn a_token_without_a_calendar_write_scope_is_403_insufficient_permissions() {
    let h = Harness::start().await;
    let tokens = h
        .connect_with(
            &h.auth_url(&[(
                "scope",
                "openid email https://www.googleapis.com/auth/calendar.readonly",
            )]),
            ALICE,
        )
        .await;
    let (status, body) = h
        .insert(&tokens.access_token, timed_event("scope0001"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], 403);
    assert_eq!(
        body["error"]["message"],
        "Request had insufficient authentication scopes."
    );
    assert_eq!(body["error"]["status"], "PERMISSION_DENIED");
    assert_eq!(
        body["error"]["errors"][0]["reason"],
        "insufficientPermissions"
    );
    // Reading is allowed with a read-only scope.
    let (status, _, _) = h
        .event_call(Method::GET, &tokens.access_token, "scope0001", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn each_write_scope_may_insert() {
    let h = Harness::start().await;
    for (i, scope) in [
        "https://www.googleapis.com/auth/calendar",
        "https://www.googleapis.com/auth/calendar.events",
        "https://www.googleapis.com/auth/calendar.events.owned",
    ]
    .iter()
    .enumerate()
    {
        let tokens = h
            .connect_with(
                &h.auth_url(&[
                    ("scope", &format!("openid {scope}")),
                    ("include_granted_scopes", ""),
                ]),
                ALICE,
            )
            .await;
        let (status, body) = h
            .insert(&tokens.access_token, timed_event(&format!("scopes{i:03}")))
            .await;
        assert_eq!(status, StatusCode::OK, "{scope}: {body}");
    }
}

const NO_START_ZONE: &str = "Missing time zone definition for start time.";
const BAD_START_ZONE: &str = "Invalid time zone definition for start time.";

async fn expect_400(h: &Harness, token: &str, event: Value, reason: &str, message: &str) {
    let (status, body) = h.insert(token, event.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{event}: {body}");
    let (code, got_reason, got_message) = google_error(&body);
    assert_eq!(
        (code, got_reason.as_str(), got_message.as_str()),
        (400, reason, message),
        "{event}"
    );
}

#[tokio::test]
async fn time_range_rules_are_enforced() {
    let (h, token) = alice().await;
    let mut same = timed_event("range0001");
    same["end"] = same["start"].clone();
    let mut backwards = timed_event("range0002");
    backwards["end"] = json!({"dateTime": "2026-12-01T08:00:00+01:00"});
    let one_day =
        json!({"id": "range0003", "start": {"date": "2026-12-02"}, "end": {"date": "2026-12-02"}});
    for event in [same, backwards, one_day] {
        let empty = "The specified time range is empty.";
        expect_400(&h, &token, event, "timeRangeEmpty", empty).await;
    }
    let mut event = timed_event("range0004");
    event.as_object_mut().unwrap().remove("end");
    expect_400(&h, &token, event, "required", "Missing end time.").await;
    let mut event = timed_event("range0005");
    event["end"] = json!({"date": "2026-12-02"});
    assert_eq!(
        h.insert(&token, event).await.0,
        StatusCode::BAD_REQUEST,
        "start and end of different kinds"
    );
    let event =
        json!({"id": "range0006", "start": {"date": "2026-12-02"}, "end": {"date": "2026-12-03"}});
    assert_eq!(
        h.insert(&token, event).await.0,
        StatusCode::OK,
        "an all-day event with exclusive end"
    );
}

#[tokio::test]
async fn time_zone_rules_are_enforced() {
    let (h, token) = alice().await;
    let mut event = timed_event("tm0n00001");
    event["start"]["timeZone"] = json!("Mars/Olympus");
    expect_400(&h, &token, event, "invalid", BAD_START_ZONE).await;
    let event = json!({"id": "tm0n00002",
        "start": {"dateTime": "2026-12-01T09:00:00"}, "end": {"dateTime": "2026-12-01T10:00:00"}});
    expect_400(&h, &token, event, "required", NO_START_ZONE).await;
    let event = json!({"id": "tm0n00003",
        "start": {"dateTime": "2026-12-01T09:00:00", "timeZone": "America/New_York"},
        "end": {"dateTime": "2026-12-01T10:00:00", "timeZone": "America/New_York"}});
    assert_eq!(
        h.insert(&token, event).await.0,
        StatusCode::OK,
        "local time with a zone is fine"
    );
}

#[tokio::test]
async fn recurrence_rules_are_enforced() {
    let (h, token) = alice().await;
    let mut event = timed_event("recur0001");
    event["recurrence"] = json!([
        "RRULE:FREQ=WEEKLY;COUNT=3",
        "EXDATE;TZID=Europe/Berlin:20261208T090000"
    ]);
    let (status, body) = h.insert(&token, event).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["recurrence"][0], "RRULE:FREQ=WEEKLY;COUNT=3");
    let mut event = timed_event("recur0002");
    event["recurrence"] = json!(["RRULE:FREQ=WEEKLY"]);
    event["start"].as_object_mut().unwrap().remove("timeZone");
    expect_400(&h, &token, event, "required", NO_START_ZONE).await;
    for bad in [
        json!(["FREQ=WEEKLY"]),
        json!(["RRULE:FREQ=SOMETIMES"]),
        json!(["RRULE:COUNT=3"]),
        json!(["RRULE:FREQ=DAILY;COUNT=2;UNTIL=20270101T000000Z"]),
        json!(["XRULE:FREQ=DAILY"]),
        json!("RRULE:FREQ=DAILY"),
    ] {
        let mut event = timed_event("recur0003");
        event["recurrence"] = bad.clone();
        expect_400(&h, &token, event, "invalid", "Invalid recurrence rule.").await;
    }
    let event = json!({"id": "recur0004", "start": {"date": "2026-12-02"}, "end": {"date": "2026-12-03"},
        "recurrence": ["RRULE:FREQ=YEARLY"]});
    assert_eq!(
        h.insert(&token, event).await.0,
        StatusCode::OK,
        "all-day recurring events need no zone"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_parse_error() {
    let (h, token) = alice().await;
    let response = h
        .http
        .post(h.url("calendar/v3/calendars/primary/events"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(google_error(&body).1, "parseError");
}

const APP_CREATED: &str = "https://www.googleapis.com/auth/calendar.app.created";

/// Alice's token holding only `calendar.app.created` (and the sign-in scopes).
async fn app_created_token(h: &Harness) -> String {
    let url = h.auth_url(&[("scope", &format!("openid email {APP_CREATED}"))]);
    h.connect_with(&url, ALICE).await.access_token
}

fn assert_insufficient_scopes(status: StatusCode, body: &Value, what: &str) {
    assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
    assert_eq!(
        google_error(body),
        (
            403,
            "insufficientPermissions".into(),
            "Request had insufficient authentication scopes.".into()
        ),
        "{what}"
    );
}

/// The secondary calendar titled `summary` that `calendars.insert` makes with `token`.
async fn make_calendar(h: &Harness, token: &str, summary: &str) -> Value {
    let (status, _, made) = h
        .calendar(
            Method::POST,
            "calendars",
            Some(token),
            Some(json!({"summary": summary})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    made
}

#[tokio::test]
async fn calendars_insert_get_and_delete_a_secondary_calendar() {
    let h = Harness::start().await;
    let token = app_created_token(&h).await;
    let made = make_calendar(&h, &token, "Acme events").await;
    assert_eq!(made["kind"], "calendar#calendar");
    assert_eq!(made["summary"], "Acme events");
    let id = made["id"].as_str().unwrap();
    assert!(id.ends_with("@group.calendar.google.com"), "{id}");
    let (status, _, got) = h
        .calendar(Method::GET, &format!("calendars/{id}"), Some(&token), None)
        .await;
    assert_eq!((status, &got["id"]), (StatusCode::OK, &made["id"]));
    // Events go into it with the same token.
    let (status, _, event) = h
        .calendar(
            Method::POST,
            &format!("calendars/{id}/events"),
            Some(&token),
            Some(timed_event("appcal0001")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    let listed = h.control.calendars(ALICE).await.unwrap();
    assert!(listed.iter().any(|c| c["id"] == id), "{listed:?}");
    let (status, _, _) = h
        .calendar(
            Method::DELETE,
            &format!("calendars/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Gone: the calendar, and every call on its events, is 404.
    let (status, _, body) = h
        .calendar(Method::GET, &format!("calendars/{id}"), Some(&token), None)
        .await;
    assert_not_found(status, &body, "get after delete");
    let (status, _, body) = h
        .calendar(
            Method::POST,
            &format!("calendars/{id}/events"),
            Some(&token),
            Some(timed_event("appcal0002")),
        )
        .await;
    assert_not_found(status, &body, "insert into a deleted calendar");
    let stats = h.stats().await;
    assert_eq!(
        (
            &stats["calendar"]["calendars_insert"],
            &stats["calendar"]["calendars_get"],
            &stats["calendar"]["calendars_delete"]
        ),
        (&json!(1), &json!(2), &json!(1))
    );
}

#[tokio::test]
async fn calendars_insert_needs_a_title() {
    let h = Harness::start().await;
    let token = app_created_token(&h).await;
    let (status, _, body) = h
        .calendar(Method::POST, "calendars", Some(&token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(google_error(&body).1, "required");
}

#[tokio::test]
async fn app_created_reaches_only_the_calendars_its_client_made() {
    let h = Harness::start().await;
    let token = app_created_token(&h).await;
    // The primary calendar, read or written, by name or by id.
    for path in [
        "calendars/primary/events",
        &format!("calendars/{ALICE}/events"),
    ] {
        let (status, _, body) = h
            .calendar(
                Method::POST,
                path,
                Some(&token),
                Some(timed_event("prim0001")),
            )
            .await;
        assert_insufficient_scopes(status, &body, path);
        let (status, _, body) = h.calendar(Method::GET, path, Some(&token), None).await;
        assert_insufficient_scopes(status, &body, path);
    }
    let (status, _, body) = h
        .calendar(Method::GET, "calendars/primary", Some(&token), None)
        .await;
    assert_insufficient_scopes(status, &body, "calendars.get primary");
    // A secondary calendar the user made themselves (not through this client).
    h.control_ok(
        "calendars",
        json!({"email": ALICE, "calendar_id": "family@group.calendar.google.com"}),
    )
    .await;
    let path = "calendars/family@group.calendar.google.com";
    let (status, _, body) = h
        .calendar(
            Method::POST,
            &format!("{path}/events"),
            Some(&token),
            Some(timed_event("fam00001")),
        )
        .await;
    assert_insufficient_scopes(status, &body, "insert into the user's own calendar");
    let (status, _, body) = h.calendar(Method::DELETE, path, Some(&token), None).await;
    assert_insufficient_scopes(status, &body, "delete the user's own calendar");
    // A token with only events.owned cannot make calendars.
    let url = h.auth_url(&[
        (
            "scope",
            "openid https://www.googleapis.com/auth/calendar.events.owned",
        ),
        ("include_granted_scopes", ""),
    ]);
    let owned = h.connect_with(&url, ALICE).await.access_token;
    let (status, _, body) = h
        .calendar(
            Method::POST,
            "calendars",
            Some(&owned),
            Some(json!({"summary": "x"})),
        )
        .await;
    assert_insufficient_scopes(status, &body, "calendars.insert with events.owned");
    assert!(
        h.stored(ALICE).await.is_empty(),
        "nothing reached the primary calendar"
    );
}

#[tokio::test]
async fn the_user_deleting_the_calendar_in_google_makes_its_calls_404() {
    let h = Harness::start().await;
    let token = app_created_token(&h).await;
    let made = make_calendar(&h, &token, "Acme events").await;
    let id = made["id"].as_str().unwrap();
    h.control.delete_calendar(ALICE, id).await.unwrap();
    let (status, _, body) = h
        .calendar(
            Method::PUT,
            &format!("calendars/{id}/events/appcal0003"),
            Some(&token),
            Some(timed_event("appcal0003")),
        )
        .await;
    assert_not_found(status, &body, "update in a calendar the user deleted");
}
