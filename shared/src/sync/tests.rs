//! Unit tests of the batch logic with in-memory fakes of our own traits (ordering, grouping,
//! skipping, parking, failure cut-off). The same cases run over HTTP in `shared/tests/sync.rs`.

use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use aws_lambda_events::event::dynamodb::EventRecord;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{
    SyncPorts, Syncer,
    pacing::{Pacer, PacingLimits, Rate},
    resync::{ResyncReport, UserResync},
    retry::Deadline,
    retry::RetryPolicy,
};
use crate::{
    calendar::{Calendar, CalendarError},
    lifecycle::{Kind, RecordedEvents},
    mapping::google_event_id,
    store::{InMemoryEvents, InMemorySyncStateStore},
    sync_state::{SyncStateStore, SyncStatus},
    tokens::fakes::{FakeGrants, FakeRefresher},
};

/// Google calendars in memory: `(user token prefix, calendar, id) -> event`, plus queued faults.
#[derive(Default)]
struct FakeCalendar {
    events: Mutex<HashMap<(String, String), Value>>,
    /// Event summaries whose writes always fail with this error.
    failing: Mutex<HashMap<String, CalendarError>>,
    calls: AtomicUsize,
    /// How long each insert takes (Google's latency).
    latency: Option<Duration>,
}

impl FakeCalendar {
    /// The title of the Google copy of the app's `event_id` in the primary calendar.
    fn primary_title(&self, event_id: &str) -> Option<String> {
        self.summary("primary", &google_event_id(event_id))
    }

    fn summary(&self, calendar: &str, id: &str) -> Option<String> {
        self.events
            .lock()
            .unwrap()
            .get(&(calendar.to_string(), id.to_string()))
            .map(|e| e["summary"].as_str().unwrap().to_string())
    }

    fn check(&self, token: &SecretString, event: Option<&Value>) -> Result<(), CalendarError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        assert!(!token.expose_secret().is_empty());
        if let Some(summary) = event.and_then(|e| e["summary"].as_str())
            && let Some(error) = self.failing.lock().unwrap().get(summary)
        {
            return Err(error.clone());
        }
        Ok(())
    }
}

impl Calendar for FakeCalendar {
    async fn insert(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event: &Value,
    ) -> Result<(), CalendarError> {
        self.check(token, Some(event))?;
        if let Some(latency) = self.latency {
            tokio::time::sleep(latency).await;
        }
        let key = (
            calendar_id.to_string(),
            event["id"].as_str().unwrap().to_string(),
        );
        let mut events = self.events.lock().unwrap();
        if events.contains_key(&key) {
            return Err(CalendarError::Conflict);
        }
        events.insert(key, event.clone());
        Ok(())
    }

    async fn update(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event_id: &str,
        event: &Value,
    ) -> Result<(), CalendarError> {
        self.check(token, Some(event))?;
        let key = (calendar_id.to_string(), event_id.to_string());
        let mut events = self.events.lock().unwrap();
        match events.get_mut(&key) {
            Some(e) => {
                *e = event.clone();
                Ok(())
            }
            None => Err(CalendarError::NotFound),
        }
    }

    async fn delete(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event_id: &str,
    ) -> Result<(), CalendarError> {
        self.check(token, None)?;
        match self
            .events
            .lock()
            .unwrap()
            .remove(&(calendar_id.to_string(), event_id.to_string()))
        {
            Some(_) => Ok(()),
            None => Err(CalendarError::Gone),
        }
    }

    /// Two marked events a page, by id; the token is the last id of the page.
    async fn list_ours(
        &self,
        _: &SecretString,
        calendar_id: &str,
        page_token: Option<&str>,
    ) -> Result<crate::calendar::EventPage, CalendarError> {
        use crate::mapping::{MARKER_PROPERTY, MARKER_VALUE};
        let events = self.events.lock().unwrap();
        let mut ours: Vec<(&String, &Value)> = events
            .iter()
            .filter(|((calendar, id), event)| {
                calendar == calendar_id
                    && page_token.is_none_or(|after| id.as_str() > after)
                    && event["extendedProperties"]["private"][MARKER_PROPERTY] == MARKER_VALUE
            })
            .map(|((_, id), event)| (id, event))
            .collect();
        ours.sort_by_key(|(id, _)| id.as_str());
        let page: Vec<_> = ours.iter().take(2).collect();
        Ok(crate::calendar::EventPage {
            items: page.iter().map(|(_, e)| (*e).clone()).collect(),
            next: (ours.len() > 2).then(|| page[1].0.clone()),
        })
    }
}

/// Fakes of every port, with the calendar `C`.
struct Fakes<C>(std::marker::PhantomData<C>);

impl<C: Calendar> SyncPorts for Fakes<C> {
    type Calendar = C;
    type States = InMemorySyncStateStore;
    type Grants = FakeGrants;
    type Refresher = FakeRefresher;
    type Events = InMemoryEvents;
    type Backfill = crate::http::NothingAfterConnect;
    type Lifecycle = RecordedEvents;
}

type TestSyncer = Syncer<Fakes<FakeCalendar>>;

fn syncer(grants: FakeGrants) -> TestSyncer {
    Syncer {
        calendar: FakeCalendar::default(),
        states: InMemorySyncStateStore::new(),
        grants,
        refresher: FakeRefresher::default(),
        events: InMemoryEvents::new(),
        lifecycle: RecordedEvents::new(),
        retry: RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(2),
            max_attempts: 3,
            safety_margin: Duration::from_millis(1),
        },
        // Google's own limits would make these tests wait; the pacing tests set theirs.
        pacer: Pacer::new(UNHURRIED),
        concurrency: 4,
        app_calendar: None,
        backfill: crate::http::NothingAfterConnect,
    }
}

impl TestSyncer {
    /// This syncer over a calendar of a test's own, everything else kept.
    fn with_calendar<C: Calendar>(self, calendar: C) -> Syncer<Fakes<C>> {
        Syncer {
            calendar,
            states: self.states,
            grants: self.grants,
            refresher: self.refresher,
            events: self.events,
            lifecycle: self.lifecycle,
            retry: self.retry,
            pacer: self.pacer,
            concurrency: self.concurrency,
            app_calendar: self.app_calendar,
            backfill: self.backfill,
        }
    }
}

/// Rates no test here reaches.
const UNHURRIED: PacingLimits = PacingLimits {
    per_user: Rate {
        per_minute: 600_000,
        burst: 10_000,
    },
    per_container: Rate {
        per_minute: 600_000,
        burst: 10_000,
    },
};

fn image(event_id: &str, user: &str, title: &str) -> Value {
    json!({
        "event_id": {"S": event_id}, "user_id": {"S": user}, "title": {"S": title},
        "start": {"S": "2026-12-01T09:00:00Z"}, "end": {"S": "2026-12-01T10:00:00Z"},
    })
}

fn record(
    name: &str,
    seq: &str,
    event_id: &str,
    new: Option<Value>,
    old: Option<Value>,
) -> EventRecord {
    let mut change = json!({
        "Keys": {"event_id": {"S": event_id}},
        "SequenceNumber": seq, "SizeBytes": 1, "StreamViewType": "NEW_AND_OLD_IMAGES",
    });
    if let Some(new) = new {
        change["NewImage"] = new;
    }
    if let Some(old) = old {
        change["OldImage"] = old;
    }
    serde_json::from_value(json!({
        "awsRegion": "us-east-1", "eventID": format!("r{seq}"), "eventName": name,
        "eventSource": "aws:dynamodb", "eventVersion": "1.1", "dynamodb": change,
    }))
    .unwrap()
}

/// An INSERT of `event_id` for `user` titled `title`.
fn insert(seq: &str, event_id: &str, user: &str, title: &str) -> EventRecord {
    record(
        "INSERT",
        seq,
        event_id,
        Some(image(event_id, user, title)),
        None,
    )
}

/// A MODIFY of `event_id` (staying with `user`) from the title `was` to `title`.
fn modify(seq: &str, event_id: &str, user: &str, title: &str, was: &str) -> EventRecord {
    let (new, old) = (image(event_id, user, title), image(event_id, user, was));
    record("MODIFY", seq, event_id, Some(new), Some(old))
}

/// A syncer whose one user, u1, is connected with an hour left on the access token.
fn connected_syncer() -> TestSyncer {
    syncer(FakeGrants::default().with_user("u1", chrono::Duration::hours(1)))
}

/// `records` as one batch, with the time a real invocation has; the records that failed.
async fn sync(s: &TestSyncer, records: Vec<EventRecord>) -> Vec<String> {
    s.sync_batch(records, deadline()).await
}

/// `user`'s resync run to the end in invocations of `slice` each, every one continuing the job
/// the last one queued (at most `most` of them, and more than one): each invocation's report.
async fn resync_in_slices(
    s: &TestSyncer,
    user: &str,
    slice: Duration,
    most: usize,
) -> Vec<ResyncReport> {
    let mut job = Some(UserResync::from_start(user));
    let mut reports = Vec::new();
    while let Some(next) = job {
        assert!(reports.len() < most, "the resync makes no progress");
        let (report, rest) = s.resync_user(next, Deadline::in_(slice)).await.unwrap();
        reports.push(report);
        job = rest;
    }
    assert!(
        reports.len() > 1,
        "one invocation did everything; the test proves nothing"
    );
    reports
}

fn deadline() -> Deadline {
    Deadline::in_(Duration::from_secs(30))
}

fn gid(event_id: &str) -> String {
    google_event_id(event_id)
}

#[tokio::test]
async fn insert_modify_remove_in_order_within_one_batch() {
    let s = connected_syncer();
    let failed = sync(
        &s,
        vec![
            insert("100", "e1", "u1", "A"),
            modify("200", "e1", "u1", "B", "A"),
            insert("150", "e2", "u1", "X"),
            modify("300", "e1", "u1", "C", "B"),
        ],
    )
    .await;
    assert!(failed.is_empty());
    assert_eq!(s.calendar.primary_title("e1").as_deref(), Some("C"));
    assert_eq!(s.calendar.primary_title("e2").as_deref(), Some("X"));
    let states = s.states.snapshot().await;
    assert_eq!(states["e1"].last_sequence.as_ref().unwrap().as_str(), "300");
    assert_eq!(states["e1"].status, SyncStatus::Synced);

    let failed = sync(
        &s,
        vec![record(
            "REMOVE",
            "400",
            "e1",
            None,
            Some(image("e1", "u1", "C")),
        )],
    )
    .await;
    assert!(failed.is_empty());
    assert_eq!(s.calendar.primary_title("e1"), None);
    assert_eq!(s.states.snapshot().await["e1"].status, SyncStatus::Deleted);
}

#[tokio::test]
async fn redelivered_and_older_records_are_skipped() {
    let s = connected_syncer();
    let batch = vec![
        insert("9", "e1", "u1", "A"),
        modify("10", "e1", "u1", "B", "A"),
    ];
    assert!(sync(&s, batch.clone()).await.is_empty());
    let calls = s.calendar.calls.load(Ordering::SeqCst);
    assert!(sync(&s, batch).await.is_empty());
    assert_eq!(
        s.calendar.calls.load(Ordering::SeqCst),
        calls,
        "a redelivered batch calls Google again"
    );
    // "9" < "10" numerically even though it is greater as text.
    assert_eq!(s.calendar.primary_title("e1").as_deref(), Some("B"));
}

#[tokio::test]
async fn unsynced_modify_makes_no_call_but_records_the_sequence() {
    let s = connected_syncer();
    sync(&s, vec![insert("1", "e1", "u1", "A")]).await;
    let calls = s.calendar.calls.load(Ordering::SeqCst);
    let mut colored = image("e1", "u1", "A");
    colored["color"] = json!({"S": "red"});
    let failed = sync(
        &s,
        vec![record(
            "MODIFY",
            "2",
            "e1",
            Some(colored),
            Some(image("e1", "u1", "A")),
        )],
    )
    .await;
    assert!(failed.is_empty());
    assert_eq!(s.calendar.calls.load(Ordering::SeqCst), calls);
    assert_eq!(
        s.states.snapshot().await["e1"]
            .last_sequence
            .as_ref()
            .unwrap()
            .as_str(),
        "2"
    );
}

#[tokio::test]
async fn failure_stops_that_event_only_and_names_the_record() {
    let s = connected_syncer();
    s.calendar.failing.lock().unwrap().insert(
        "BAD".into(),
        CalendarError::Server {
            status: 500,
            retry_after: None,
        },
    );
    let failed = sync(
        &s,
        vec![
            insert("1", "e1", "u1", "A"),
            modify("2", "e1", "u1", "BAD", "A"),
            insert("3", "e2", "u1", "other"),
            modify("4", "e1", "u1", "later", "BAD"),
        ],
    )
    .await;
    assert_eq!(failed, vec!["2".to_string()]);
    assert_eq!(s.calendar.primary_title("e1").as_deref(), Some("A"));
    assert_eq!(s.calendar.primary_title("e2").as_deref(), Some("other"));
    assert_eq!(
        s.states.snapshot().await["e1"]
            .last_sequence
            .as_ref()
            .unwrap()
            .as_str(),
        "1"
    );
}

#[tokio::test]
async fn users_without_grants_are_parked_and_resynced_from_the_current_row() {
    let s = connected_syncer();
    let failed = sync(&s, vec![insert("1", "e9", "nobody", "A")]).await;
    assert!(failed.is_empty());
    assert_eq!(
        s.states.snapshot().await["e9"].status,
        SyncStatus::NotConnected
    );

    // The user connects; the current row is what the resync applies, and a row the stream
    // never carried (older than calsync) comes along.
    let s = Syncer {
        grants: FakeGrants::default().with_user("nobody", chrono::Duration::hours(1)),
        ..s
    };
    s.events.set("e9", Some(item(image("e9", "nobody", "Now"))));
    s.events.set(
        "old",
        Some(item(image("old", "nobody", "Older than calsync"))),
    );
    let (report, rest) = s
        .resync_user(UserResync::from_start("nobody"), deadline())
        .await
        .unwrap();
    assert_eq!((report.applied, rest), (2, None));
    assert_eq!(s.calendar.primary_title("e9").as_deref(), Some("Now"));
    assert_eq!(
        s.calendar.primary_title("old").as_deref(),
        Some("Older than calsync")
    );
    assert_eq!(s.states.snapshot().await["e9"].status, SyncStatus::Synced);

    // Everything is in sync now: a second resync calls Google for nothing.
    let calls = s.calendar.calls.load(Ordering::SeqCst);
    let (report, _) = s
        .resync_user(UserResync::from_start("nobody"), deadline())
        .await
        .unwrap();
    assert_eq!((report.applied, report.in_sync), (0, 2));
    assert_eq!(s.calendar.calls.load(Ordering::SeqCst), calls);
}

fn item(value: Value) -> serde_dynamo::Item {
    serde_json::from_value(value).unwrap()
}

/// A calendar whose first insert of `racing` lets a stream REMOVE of that row land first: the
/// row is deleted, event-sync records the deletion (it found no Google copy yet), and only then
/// does the insert reach Google.
struct RemoveRacingInsert {
    inner: FakeCalendar,
    racing: &'static str,
    states: InMemorySyncStateStore,
    events: InMemoryEvents,
    raced: std::sync::atomic::AtomicBool,
}

/// [`connected_syncer`] over a [`RemoveRacingInsert`] of `racing`, which sees its rows and states.
fn remove_racing_insert_of(racing: &'static str) -> Syncer<Fakes<RemoveRacingInsert>> {
    let plain = connected_syncer();
    let calendar = RemoveRacingInsert {
        inner: FakeCalendar::default(),
        racing,
        states: plain.states.clone(),
        events: plain.events.clone(),
        raced: Default::default(),
    };
    plain.with_calendar(calendar)
}

impl Calendar for RemoveRacingInsert {
    async fn insert(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event: &Value,
    ) -> Result<(), CalendarError> {
        if event["id"] == gid(self.racing).as_str() && !self.raced.swap(true, Ordering::SeqCst) {
            self.events.set(self.racing, None);
            let deleted = crate::sync_state::SyncState {
                event_id: self.racing.into(),
                user_id: Some("u1".into()),
                calendar_id: "primary".into(),
                google_event_id: None,
                status: SyncStatus::Deleted,
                last_sequence: crate::sync_state::Sequence::parse("2"),
                fingerprint: None,
                last_error: None,
                updated_at: chrono::Utc::now(),
                synced_at: Some(chrono::Utc::now()),
                leftover_of: None,
            };
            let before = self.states.get(self.racing).await.unwrap();
            self.states
                .put(&deleted, &crate::sync_state::Expected::of(before.as_ref()))
                .await
                .unwrap();
        }
        self.inner.insert(token, calendar_id, event).await
    }

    async fn update(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event_id: &str,
        event: &Value,
    ) -> Result<(), CalendarError> {
        self.inner.update(token, calendar_id, event_id, event).await
    }

    async fn delete(
        &self,
        token: &SecretString,
        calendar_id: &str,
        event_id: &str,
    ) -> Result<(), CalendarError> {
        self.inner.delete(token, calendar_id, event_id).await
    }
}

#[tokio::test]
async fn a_remove_racing_a_resync_leaves_no_copy_in_google() {
    let s = remove_racing_insert_of("e5");
    s.events.set("e5", Some(item(image("e5", "u1", "Racing"))));
    s.events.set("e6", Some(item(image("e6", "u1", "Calm"))));
    let (report, _) = s
        .resync_user(UserResync::from_start("u1"), deadline())
        .await
        .unwrap();
    assert!(s.calendar.raced.load(Ordering::SeqCst), "the race happened");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(
        s.calendar.inner.primary_title("e5"),
        None,
        "the resync resurrected a deleted row"
    );
    assert_eq!(
        s.calendar.inner.primary_title("e6").as_deref(),
        Some("Calm")
    );
    let state = &s.states.snapshot().await["e5"];
    assert_eq!(
        (state.status, state.google_event_id.as_deref()),
        (SyncStatus::Deleted, None)
    );
}

#[tokio::test]
async fn a_resync_out_of_time_hands_back_where_to_resume_and_redoes_nothing() {
    let mut s = connected_syncer();
    s.calendar.latency = Some(Duration::from_millis(1));
    let rows = crate::sync_state::PAGE_SIZE * 2 + 10;
    for i in 0..rows {
        let id = format!("r{i:04}");
        s.events.set(&id, Some(item(image(&id, "u1", &id))));
    }
    // Each invocation has time for a few dozen of the rows at most.
    let reports = resync_in_slices(&s, "u1", Duration::from_millis(30), 1000).await;
    let applied: usize = reports.iter().map(|r| r.applied).sum();
    assert_eq!(applied, rows, "every row applied exactly once");
    assert_eq!(s.calendar.events.lock().unwrap().len(), rows);
}

#[tokio::test]
async fn moved_events_leave_the_old_place_and_poison_is_skipped() {
    let s = syncer(
        FakeGrants::default()
            .with_user("u1", chrono::Duration::hours(1))
            .with_user("u2", chrono::Duration::hours(1)),
    );
    let mut moved = image("e1", "u1", "A");
    moved["calendar_id"] = json!({"S": "team"});
    let mut no_key = insert("3", "x", "u1", "P");
    no_key.change.keys.clear();
    let failed = sync(
        &s,
        vec![
            insert("1", "e1", "u1", "A"),
            no_key,
            record(
                "MODIFY",
                "2",
                "e1",
                Some(moved.clone()),
                Some(image("e1", "u1", "A")),
            ),
        ],
    )
    .await;
    assert!(failed.is_empty());
    assert_eq!(s.calendar.primary_title("e1"), None);
    assert_eq!(s.calendar.summary("team", &gid("e1")).as_deref(), Some("A"));
    assert_eq!(s.calendar.primary_title("x"), None);
    let invalid = {
        let mut i = moved.clone();
        i.as_object_mut().unwrap().remove("title");
        i
    };
    sync(
        &s,
        vec![record("MODIFY", "5", "e1", Some(invalid), Some(moved))],
    )
    .await;
    let state = &s.states.snapshot().await["e1"];
    assert_eq!(state.status, SyncStatus::Invalid);
    assert!(state.last_error.as_deref().unwrap().contains("title"));
}

/// A calendar whose inserts wait at a gate the test opens, counting how many are in flight.
struct GatedCalendar {
    gate: tokio::sync::Semaphore,
    started: tokio::sync::Notify,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Calendar for GatedCalendar {
    async fn insert(&self, _: &SecretString, _: &str, _: &Value) -> Result<(), CalendarError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.started.notify_one();
        self.gate.acquire().await.unwrap().forget();
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    async fn update(
        &self,
        _: &SecretString,
        _: &str,
        _: &str,
        _: &Value,
    ) -> Result<(), CalendarError> {
        unreachable!("only inserts in this test")
    }
    async fn delete(&self, _: &SecretString, _: &str, _: &str) -> Result<(), CalendarError> {
        unreachable!("only inserts in this test")
    }
}

#[tokio::test(flavor = "current_thread")]
async fn events_run_concurrently_up_to_the_limit() {
    let mut grants = FakeGrants::default();
    let mut records = Vec::new();
    for i in 0..9 {
        let user = format!("user{i}");
        grants = grants.with_user(&user, chrono::Duration::hours(1));
        let id = format!("c{i}");
        records.push(record(
            "INSERT",
            &format!("{}", i + 1),
            &id,
            Some(image(&id, &user, "T")),
            None,
        ));
    }
    let gated = GatedCalendar {
        gate: tokio::sync::Semaphore::new(0),
        started: tokio::sync::Notify::new(),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
    };
    let s = Syncer {
        retry: RetryPolicy::default(),
        concurrency: 3,
        ..syncer(grants).with_calendar(gated)
    };
    let open_gate = async {
        // Every event that may start reaches the calendar in the batch's first poll, so once 3
        // are in flight, a 4th would already have shown up if the limit allowed it.
        while s.calendar.in_flight.load(Ordering::SeqCst) < 3 {
            s.calendar.started.notified().await;
        }
        tokio::task::yield_now().await;
        let seen = s.calendar.max_in_flight.load(Ordering::SeqCst);
        s.calendar.gate.add_permits(100);
        seen
    };
    let (failed, seen) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(s.sync_batch(records, deadline()), open_gate)
    })
    .await
    .expect("three events were in flight at once");
    assert!(failed.is_empty());
    assert_eq!(seen, 3);
    assert_eq!(s.calendar.max_in_flight.load(Ordering::SeqCst), 3);
    assert_eq!(s.states.snapshot().await.len(), 9);
}

#[tokio::test]
async fn a_refused_refresh_reports_needs_reauth_and_parked_once_per_episode() {
    let s = syncer(
        FakeGrants::default()
            // Expiring: the first call refreshes, and Google refuses the refresh token.
            .with_user("u1", chrono::Duration::minutes(1)),
    );
    s.refresher.revoked.lock().unwrap().push("rt-u1".into());
    let batch = |first: u32, ids: &[&str], user: &str| {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let seq = (first + i as u32).to_string();
                insert(&seq, id, user, "A")
            })
            .collect::<Vec<_>>()
    };
    let failed = sync(&s, batch(1, &["e1", "e2", "e3"], "u1")).await;
    assert!(failed.is_empty());
    for id in ["e1", "e2", "e3"] {
        assert_eq!(
            s.states.snapshot().await[id].status,
            SyncStatus::NeedsReauth
        );
    }
    assert_eq!(
        s.lifecycle.kinds(),
        [Kind::GrantNeedsReauth, Kind::SyncParked]
    );
    let events = s.lifecycle.events();
    assert_eq!(events[0].detail.user_id, "u1");
    assert_eq!(
        events[0].detail.reason,
        Some(crate::grants::ReauthReason::InvalidGrant)
    );
    assert_eq!(events[1].detail.status, "needs_reauth");
    assert_eq!(
        s.grants.park_reports.load(Ordering::SeqCst),
        1,
        "the grant is asked once per user per batch"
    );

    // More records of the same episode, and a user who never connected: no new event.
    let failed = sync(&s, batch(10, &["e4", "e5"], "u1")).await;
    assert!(failed.is_empty());
    let failed = sync(&s, batch(20, &["n1"], "nobody")).await;
    assert!(failed.is_empty());
    assert_eq!(
        s.states.snapshot().await["n1"].status,
        SyncStatus::NotConnected
    );
    assert_eq!(s.lifecycle.events().len(), 2);
}

/// Makes `user`'s grant last used `days` ago.
fn idle_for(grants: &FakeGrants, user: &str, days: i64) {
    let mut all = grants.grants.lock().unwrap();
    let grant = all.get_mut(user).unwrap();
    grant.last_used_at = chrono::Utc::now() - chrono::Duration::days(days);
}

#[tokio::test]
async fn keep_alive_refreshes_only_grants_idle_for_the_period() {
    use super::keep_alive::KeepAlive;
    let period = chrono::Duration::days(30);
    // Both access tokens are valid for an hour: only idleness decides.
    let s = syncer(
        FakeGrants::default()
            .with_user("idle", chrono::Duration::hours(1))
            .with_user("busy", chrono::Duration::hours(1)),
    );
    idle_for(&s.grants, "idle", 31);
    idle_for(&s.grants, "busy", 29);

    assert_eq!(s.keep_alive("busy", period).await, KeepAlive::NotDue);
    assert_eq!(s.refresher.calls.load(Ordering::SeqCst), 0);
    assert_eq!(s.keep_alive("idle", period).await, KeepAlive::Refreshed);
    assert_eq!(s.refresher.calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.grants.refreshes_recorded.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.keep_alive("nobody", period).await,
        KeepAlive::Inactive,
        "no grant, nothing to keep"
    );
    assert!(s.lifecycle.events().is_empty());
}

#[tokio::test]
async fn a_refused_keep_alive_reports_needs_reauth_alone_then_parking_adds_sync_parked() {
    use super::keep_alive::KeepAlive;
    let s = connected_syncer();
    idle_for(&s.grants, "u1", 40);
    s.refresher.revoked.lock().unwrap().push("rt-u1".into());

    let period = chrono::Duration::days(30);
    assert_eq!(s.keep_alive("u1", period).await, KeepAlive::Refused);
    assert_eq!(s.grants.is_active("u1"), Some(false));
    assert_eq!(s.lifecycle.kinds(), [Kind::GrantNeedsReauth]);
    assert_eq!(
        s.lifecycle.events()[0].detail.reason,
        Some(crate::grants::ReauthReason::InvalidGrant)
    );
    // The next sweep finds it inactive and owes nothing.
    assert_eq!(s.keep_alive("u1", period).await, KeepAlive::Inactive);
    assert_eq!(s.lifecycle.events().len(), 1);

    // A change parks later in the same episode: only Sync Parked is still owed.
    let record = insert("1", "e1", "u1", "A");
    assert!(sync(&s, vec![record]).await.is_empty());
    assert_eq!(
        s.lifecycle.kinds(),
        [Kind::GrantNeedsReauth, Kind::SyncParked]
    );
}

fn at(event_id: &str, user: &str, calendar: &str) -> Value {
    let mut row = image(event_id, user, "A");
    row["calendar_id"] = json!({"S": calendar});
    row
}

#[tokio::test]
async fn a_move_away_from_an_unusable_grant_parks_the_old_copys_delete_until_reconnect() {
    use crate::sync_state::{SyncSummaries, leftover_key};
    let s = syncer(
        FakeGrants::default()
            .with_user("u1", chrono::Duration::hours(1))
            .with_user("u2", chrono::Duration::hours(1)),
    );
    let failed = s
        .sync_batch(
            vec![
                record("INSERT", "1", "e1", Some(at("e1", "u1", "cal-a")), None),
                record("INSERT", "2", "e2", Some(at("e2", "u1", "cal-a")), None),
            ],
            deadline(),
        )
        .await;
    assert!(failed.is_empty());
    // u1's grant stops working (revoked at Google: the grant turned needs_reauth).
    {
        let mut grants = s.grants.grants.lock().unwrap();
        let u1 = grants.get_mut("u1").unwrap();
        (u1.active, u1.refresh_token, u1.access_token) = (false, None, None);
    }
    // e1 moves to u2 for good; e2 moves to u2 and back to u1 before u1 reconnects.
    let failed = s
        .sync_batch(
            vec![
                record(
                    "MODIFY",
                    "3",
                    "e1",
                    Some(at("e1", "u2", "cal-b")),
                    Some(at("e1", "u1", "cal-a")),
                ),
                record(
                    "MODIFY",
                    "4",
                    "e2",
                    Some(at("e2", "u2", "cal-b")),
                    Some(at("e2", "u1", "cal-a")),
                ),
                record(
                    "MODIFY",
                    "5",
                    "e2",
                    Some(at("e2", "u1", "cal-a")),
                    Some(at("e2", "u2", "cal-b")),
                ),
            ],
            deadline(),
        )
        .await;
    assert!(failed.is_empty());
    assert!(s.calendar.summary("cal-b", &gid("e1")).is_some());
    assert!(
        s.calendar.summary("cal-a", &gid("e1")).is_some(),
        "u1's copy cannot be deleted yet"
    );
    let states = s.states.snapshot().await;
    let leftover = &states[&leftover_key("e1", "u1", "cal-a")];
    assert_eq!(
        (
            leftover.status,
            leftover.user_id.as_deref(),
            leftover.leftover_of.as_deref()
        ),
        (SyncStatus::NeedsReauth, Some("u1"), Some("e1"))
    );
    assert_eq!(
        leftover.google_event_id.as_deref(),
        Some(gid("e1").as_str())
    );
    // Parked for u1: e1's delete, e2's move back (its write at u1), e2's leftover.
    let summary = s.states.summary("u1").await.unwrap();
    assert_eq!(summary.parked, 3);

    // u1 reconnects; their resync applies the parked delete and keeps e2, which lives there again.
    let s = Syncer {
        grants: FakeGrants::default()
            .with_user("u1", chrono::Duration::hours(1))
            .with_user("u2", chrono::Duration::hours(1)),
        ..s
    };
    s.events.set("e1", Some(item(at("e1", "u2", "cal-b"))));
    s.events.set("e2", Some(item(at("e2", "u1", "cal-a"))));
    let (report, rest) = s
        .resync_user(UserResync::from_start("u1"), deadline())
        .await
        .unwrap();
    assert_eq!((report.failed, report.still_parked, rest), (0, 0, None));
    assert_eq!(s.calendar.summary("cal-a", &gid("e1")), None);
    assert!(
        s.calendar.summary("cal-b", &gid("e1")).is_some(),
        "u2's copy stays"
    );
    assert!(
        s.calendar.summary("cal-a", &gid("e2")).is_some(),
        "e2 moved back: kept"
    );
    assert_eq!(s.calendar.summary("cal-b", &gid("e2")), None);
    let states = s.states.snapshot().await;
    for key in [
        leftover_key("e1", "u1", "cal-a"),
        leftover_key("e2", "u1", "cal-a"),
    ] {
        assert_eq!(states[&key].status, SyncStatus::Deleted);
        assert_eq!(states[&key].google_event_id, None);
    }
    assert_eq!(s.states.summary("u1").await.unwrap().parked, 0);

    // Nothing is left to do: a second resync calls Google for nothing.
    let calls = s.calendar.calls.load(Ordering::SeqCst);
    s.resync_user(UserResync::from_start("u1"), deadline())
        .await
        .unwrap();
    assert_eq!(s.calendar.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn reconciliation_pages_resumes_and_deletes_only_orphans() {
    let s = syncer(FakeGrants::default().with_user("u1", chrono::Duration::hours(1)));
    for id in ["r0", "r1", "r2"] {
        s.events.set(id, Some(item(image(id, "u1", id))));
    }
    let (report, rest) = s
        .resync_user(UserResync::from_start("u1"), deadline())
        .await
        .unwrap();
    assert_eq!((report.applied, report.orphans_deleted, rest), (3, 0, None));
    // Google holds copies of rows that are gone (deletes that never reached it).
    for i in 0..5 {
        let gone = format!("gone{i}");
        let mut copy = s.calendar.events.lock().unwrap()[&("primary".into(), gid("r0"))].clone();
        copy["id"] = json!(gid(&gone));
        copy["extendedProperties"]["private"]["calsync_event_id"] = json!(gone);
        let key = ("primary".to_string(), gid(&gone));
        s.calendar.events.lock().unwrap().insert(key, copy);
    }
    // Each invocation has time for about one paced call: the listing resumes where it stopped.
    let reports = resync_in_slices(&s, "u1", Duration::from_millis(350), 100).await;
    let deleted: usize = reports.iter().map(|r| r.orphans_deleted).sum();
    assert_eq!(deleted, 5, "every orphan deleted exactly once");
    let mut left: Vec<_> = s
        .calendar
        .events
        .lock()
        .unwrap()
        .keys()
        .map(|k| k.1.clone())
        .collect();
    left.sort();
    let mut rows: Vec<_> = ["r0", "r1", "r2"].iter().map(|id| gid(id)).collect();
    rows.sort();
    assert_eq!(left, rows, "the rows' copies stay");
    assert_eq!(
        s.states.snapshot().await["gone3"].status,
        SyncStatus::Deleted
    );
}

#[tokio::test]
async fn a_batch_reads_its_states_in_one_request_per_hundred_events() {
    let s = connected_syncer();
    let inserts: Vec<_> = (0..150)
        .map(|i| insert(&format!("{}", i + 1), &format!("k{i}"), "u1", "A"))
        .collect();
    assert!(sync(&s, inserts).await.is_empty());
    // Two reads (100 + 50 keys) and one conditional write per record.
    assert_eq!(s.states.requests(), 2 + 150);

    // A batch of changes to 100 known events: one read, one write each.
    let before = s.states.requests();
    let modifies: Vec<_> = (0..100)
        .map(|i| modify(&format!("{}", i + 1000), &format!("k{i}"), "u1", "B", "A"))
        .collect();
    assert!(sync(&s, modifies.clone()).await.is_empty());
    let per_record = (s.states.requests() - before) as f64 / 100.0;
    assert!(per_record <= 1.1, "{per_record} DynamoDB calls per record");
    assert_eq!(s.calendar.primary_title("k99").as_deref(), Some("B"));

    // Redelivered: one read for the batch, and nothing else.
    let (before, calls) = (s.states.requests(), s.calendar.calls.load(Ordering::SeqCst));
    assert!(sync(&s, modifies).await.is_empty());
    assert_eq!(s.states.requests() - before, 1);
    assert_eq!(s.calendar.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn a_state_written_after_the_batch_read_is_read_again_and_the_record_applied_on_it() {
    // While the INSERT of e5 is in Google, another writer stores e5's state (at an older
    // sequence): the batch's read is stale, its conditional write loses.
    let s = remove_racing_insert_of("e5");
    let failed = s
        .sync_batch(vec![insert("7", "e5", "u1", "Racing")], deadline())
        .await;
    assert!(s.calendar.raced.load(Ordering::SeqCst), "the race happened");
    assert!(failed.is_empty(), "{failed:?}");
    let state = &s.states.snapshot().await["e5"];
    assert_eq!(
        (
            state.status,
            state.last_sequence.as_ref().map(|q| q.as_str())
        ),
        (SyncStatus::Synced, Some("7"))
    );
    assert_eq!(
        s.calendar.inner.primary_title("e5").as_deref(),
        Some("Racing")
    );
    // The batch read, the other writer's read and write, the lost write, the one item read
    // again, the write.
    assert_eq!(s.states.requests(), 6);
}

#[tokio::test]
async fn a_users_burst_is_paced_and_what_misses_the_deadline_comes_back_to_lambda() {
    let mut s = syncer(
        FakeGrants::default()
            .with_user("u1", chrono::Duration::hours(1))
            .with_user("u2", chrono::Duration::hours(1)),
    );
    // 3 at once, then one every 100 ms.
    s.pacer = Pacer::new(PacingLimits {
        per_user: Rate {
            per_minute: 600,
            burst: 3,
        },
        ..UNHURRIED
    });
    let mut records: Vec<_> = (0..12)
        .map(|i| insert(&format!("{}", i + 1), &format!("b{i:02}"), "u1", "burst"))
        .collect();
    records.push(insert("100", "other", "u2", "calm"));
    let started = std::time::Instant::now();
    let failed = s
        .sync_batch(records, Deadline::in_(Duration::from_millis(450)))
        .await;
    let slots_there_were = 3 + started.elapsed().as_millis() as usize / 100;

    let states = s.states.snapshot().await;
    let applied: Vec<_> = (0..12)
        .map(|i| format!("b{i:02}"))
        .filter(|id| {
            states
                .get(id)
                .is_some_and(|st| st.status == SyncStatus::Synced)
        })
        .collect();
    // The burst, then one every 100 ms until the deadline (7 in all), not the whole burst.
    assert!(
        (3..12).contains(&applied.len()) && applied.len() <= slots_there_were,
        "{} of u1's records applied",
        applied.len()
    );
    // Every other record of u1 is named for Lambda to deliver again; none is lost.
    assert_eq!(failed.len(), 12 - applied.len(), "{failed:?}");
    for sequence in &failed {
        let id = format!("b{:02}", sequence.parse::<usize>().unwrap() - 1);
        assert!(!states.contains_key(&id), "{id} failed but has a state");
    }
    assert_eq!(s.calendar.primary_title("other").as_deref(), Some("calm"));
}

#[tokio::test]
async fn an_event_id_no_table_can_hold_fails_alone() {
    let s = connected_syncer();
    let long = "x".repeat(2049);
    let failed = sync(
        &s,
        vec![
            insert("1", &long, "u1", "A"),
            insert("2", "fine", "u1", "B"),
        ],
    )
    .await;
    assert_eq!(failed, vec!["1".to_string()]);
    assert_eq!(s.calendar.primary_title("fine").as_deref(), Some("B"));
    assert_eq!(
        s.calendar.primary_title(&long),
        None,
        "no Google call for it"
    );
}

/// Google that makes calendars but keeps answering 404 in them, as if the user deleted each one
/// at once: the worst case of a dedicated calendar the user keeps deleting.
#[derive(Default)]
struct VanishingCalendars {
    made: AtomicUsize,
    writes: AtomicUsize,
}

impl Calendar for VanishingCalendars {
    async fn insert(&self, _: &SecretString, _: &str, _: &Value) -> Result<(), CalendarError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Err(CalendarError::NotFound)
    }

    async fn update(
        &self,
        _: &SecretString,
        _: &str,
        _: &str,
        _: &Value,
    ) -> Result<(), CalendarError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Err(CalendarError::NotFound)
    }

    async fn delete(&self, _: &SecretString, _: &str, _: &str) -> Result<(), CalendarError> {
        Ok(())
    }

    async fn create_calendar(&self, _: &SecretString, _: &str) -> Result<String, CalendarError> {
        let n = self.made.fetch_add(1, Ordering::SeqCst);
        Ok(format!("cal{n}@group.calendar.google.com"))
    }
}

#[tokio::test]
async fn a_calendar_google_keeps_losing_is_made_once_a_batch_and_the_rows_marked_invalid() {
    let s = Syncer {
        app_calendar: Some("Acme".into()),
        ..connected_syncer().with_calendar(VanishingCalendars::default())
    };
    let batch = |base: u32| {
        (0..3)
            .map(|i| {
                let seq = (base + i).to_string();
                insert(&seq, &format!("e{i}"), "u1", "A")
            })
            .collect::<Vec<_>>()
    };
    let made = || s.calendar.made.load(Ordering::SeqCst);
    let recreated = || {
        s.lifecycle
            .kinds()
            .iter()
            .filter(|k| **k == Kind::CalendarRecreated)
            .count()
    };
    // The grant names none: the first write makes one, and its 404 makes no other in this batch.
    assert!(s.sync_batch(batch(100), deadline()).await.is_empty());
    assert_eq!((made(), recreated()), (1, 0));
    // The next batch remakes it once (the app hears it), then gives up on what still fails.
    assert!(s.sync_batch(batch(200), deadline()).await.is_empty());
    assert_eq!((made(), recreated()), (2, 1));
    let recorded = s.grants.grants.lock().unwrap()["u1"].calendar.clone();
    assert_eq!(recorded.unwrap().id, "cal1@group.calendar.google.com");
    let states = s.states.snapshot().await;
    for i in 0..3 {
        let state = &states[&format!("e{i}")];
        assert_eq!(state.status, SyncStatus::Invalid, "e{i}");
        assert_eq!(state.calendar_id, "primary");
    }
    // Each write tried at most twice: in the calendar it knew, then in the one made for it.
    assert!(s.calendar.writes.load(Ordering::SeqCst) <= 3 + 2 * 3);
}
