//! The app's event rows: reading a stream image into a validated [`EventRow`], the deterministic
//! Google event id, and the mapping to Google Calendar's Event resource.
//!
//! SPEC's "The app's Events table" is the contract: which attributes exist, which are required, and
//! what each maps to. Anything else on the row is ignored, so a MODIFY that only touches other
//! attributes is not a change for Google ([`synced_fields_changed`]).

use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat};
use chrono_tz::Tz;
use data_encoding::BASE32HEX_NOPAD;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The calendar an event goes to when the row names none.
pub const DEFAULT_CALENDAR_ID: &str = "primary";

/// The private extended property that ties a Google event back to the app's row.
pub const EVENT_ID_PROPERTY: &str = "calsync_event_id";

/// A private extended property every event calsync writes carries, with a constant value: Google's
/// `events.list` filters only by `privateExtendedProperty=name=value`, so this is how the
/// reconciliation lists calsync's events (and only them) in a calendar.
pub const MARKER_PROPERTY: &str = "calsync";
pub const MARKER_VALUE: &str = "1";

/// Attributes whose change must reach Google; every other attribute of a row is ignored.
pub const SYNCED_ATTRIBUTES: [&str; 9] = [
    "user_id",
    "title",
    "description",
    "location",
    "start",
    "end",
    "time_zone",
    "recurrence",
    "calendar_id",
];

const RECURRENCE_PREFIXES: [&str; 4] = ["RRULE:", "EXRULE:", "RDATE:", "EXDATE:"];

/// Why a row cannot be synced. The text is stored as the sync state's `last_error`, so it names the
/// attribute and says what the app must fix; it never quotes more of the row than the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("the row is unreadable: {0}")]
    Unreadable(String),
    #[error("required attribute `{0}` is missing or empty")]
    Missing(&'static str),
    #[error("`{field}` is not an RFC 3339 date-time with offset nor a YYYY-MM-DD date: {value:?}")]
    BadTime { field: &'static str, value: String },
    #[error("`start` and `end` must both be date-times or both be dates")]
    MixedKinds,
    #[error("`end` must be after `start`")]
    EndNotAfterStart,
    #[error("`time_zone` {0:?} is not an IANA time zone")]
    UnknownZone(String),
    #[error(
        "`recurrence` line {0:?} must start with RRULE:, EXRULE:, RDATE: or EXDATE: and have a value"
    )]
    BadRecurrence(String),
    #[error("a recurring timed event needs `time_zone` (Google expands the rule in that zone)")]
    RecurrenceWithoutZone,
}

/// When the event happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    Timed {
        start: DateTime<FixedOffset>,
        end: DateTime<FixedOffset>,
        time_zone: Option<Tz>,
    },
    /// `end` is exclusive, as in Google.
    AllDay { start: NaiveDate, end: NaiveDate },
}

/// A validated row of the Events table.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub event_id: String,
    pub user_id: String,
    pub title: String,
    pub description: Option<String>,
    pub location: Option<String>,
    pub timing: Timing,
    pub recurrence: Vec<String>,
    pub calendar_id: String,
}

/// The row as DynamoDB holds it, before validation.
#[derive(Debug, Default, Deserialize)]
struct RawRow {
    user_id: Option<String>,
    title: Option<String>,
    description: Option<String>,
    location: Option<String>,
    start: Option<String>,
    end: Option<String>,
    time_zone: Option<String>,
    recurrence: Option<Vec<String>>,
    calendar_id: Option<String>,
}

/// The parts of a row that say where its Google copy lives, readable even when the row is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    pub user_id: Option<String>,
    pub calendar_id: String,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// Where a row says its event belongs (user and calendar), even if other attributes are invalid.
pub fn placement(image: &serde_dynamo::Item) -> Placement {
    let text = |name: &str| match image.get(name) {
        Some(serde_dynamo::AttributeValue::S(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    };
    Placement {
        user_id: text("user_id"),
        calendar_id: text("calendar_id").unwrap_or_else(|| DEFAULT_CALENDAR_ID.to_string()),
    }
}

/// True when any attribute of [`SYNCED_ATTRIBUTES`] differs between the two images.
pub fn synced_fields_changed(old: &serde_dynamo::Item, new: &serde_dynamo::Item) -> bool {
    SYNCED_ATTRIBUTES
        .iter()
        .any(|name| old.get(*name) != new.get(*name))
}

/// A digest of the row's [`SYNCED_ATTRIBUTES`]: equal for two images exactly when
/// [`synced_fields_changed`] says nothing changed, so a stored fingerprint tells a resync whether
/// Google already holds this version of the row. (Built from the values' debug text: a new
/// library version may change it, which costs one harmless re-apply per row.) The leading version
/// changes whenever what calsync writes for a row changes: every row is then applied once more
/// (events written before [`MARKER_PROPERTY`] get it so).
pub fn fingerprint(image: &serde_dynamo::Item) -> String {
    let mut hash = Sha256::new();
    hash.update(b"v2;");
    for name in SYNCED_ATTRIBUTES {
        hash.update(format!("{name}={:?};", image.get(name)).as_bytes());
    }
    BASE32HEX_NOPAD
        .encode(&hash.finalize())
        .to_ascii_lowercase()
}

enum Moment {
    Timed(DateTime<FixedOffset>),
    Date(NaiveDate),
}

fn parse_moment(field: &'static str, value: &str) -> Result<Moment, RowError> {
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(Moment::Timed(at));
    }
    if value.len() == 10
        && let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d")
    {
        return Ok(Moment::Date(date));
    }
    Err(RowError::BadTime {
        field,
        value: value.chars().take(64).collect(),
    })
}

impl EventRow {
    /// Validates a stream image (or a GetItem answer) of the row with key `event_id`.
    pub fn from_image(event_id: &str, image: &serde_dynamo::Item) -> Result<Self, RowError> {
        let raw: RawRow = serde_dynamo::from_item(image.clone())
            .map_err(|e| RowError::Unreadable(e.to_string()))?;
        let user_id = non_empty(raw.user_id).ok_or(RowError::Missing("user_id"))?;
        let title = non_empty(raw.title).ok_or(RowError::Missing("title"))?;
        let start = non_empty(raw.start).ok_or(RowError::Missing("start"))?;
        let end = non_empty(raw.end).ok_or(RowError::Missing("end"))?;
        let time_zone = match non_empty(raw.time_zone) {
            None => None,
            Some(name) => Some(
                name.parse::<Tz>()
                    .map_err(|_| RowError::UnknownZone(name.chars().take(64).collect()))?,
            ),
        };
        let timing = match (parse_moment("start", &start)?, parse_moment("end", &end)?) {
            (Moment::Timed(start), Moment::Timed(end)) => {
                if end <= start {
                    return Err(RowError::EndNotAfterStart);
                }
                Timing::Timed {
                    start,
                    end,
                    time_zone,
                }
            }
            (Moment::Date(start), Moment::Date(end)) => {
                if end <= start {
                    return Err(RowError::EndNotAfterStart);
                }
                Timing::AllDay { start, end }
            }
            _ => return Err(RowError::MixedKinds),
        };
        let recurrence = raw.recurrence.unwrap_or_default();
        for line in &recurrence {
            let valid = RECURRENCE_PREFIXES
                .iter()
                .any(|p| line.starts_with(p) && line.len() > p.len());
            if !valid {
                return Err(RowError::BadRecurrence(line.chars().take(64).collect()));
            }
        }
        if !recurrence.is_empty()
            && matches!(
                timing,
                Timing::Timed {
                    time_zone: None,
                    ..
                }
            )
        {
            return Err(RowError::RecurrenceWithoutZone);
        }
        Ok(Self {
            event_id: event_id.to_string(),
            user_id,
            title,
            description: raw.description.filter(|d| !d.is_empty()),
            location: raw.location.filter(|l| !l.is_empty()),
            timing,
            recurrence,
            calendar_id: non_empty(raw.calendar_id)
                .unwrap_or_else(|| DEFAULT_CALENDAR_ID.to_string()),
        })
    }

    /// The Google event id of this row (see [`google_event_id`]).
    pub fn google_event_id(&self) -> String {
        google_event_id(&self.event_id)
    }

    /// Google's Event resource for insert and full-replace update. Absent optional fields are left
    /// out, so an update (PUT) clears them in Google. `status: confirmed` revives an event Google
    /// holds as cancelled (deleted earlier), which an update of a deleted id needs.
    pub fn to_google_event(&self) -> Value {
        let (start, end) = match &self.timing {
            Timing::Timed {
                start,
                end,
                time_zone,
            } => {
                let at = |t: &DateTime<FixedOffset>| {
                    let mut v =
                        json!({"dateTime": t.to_rfc3339_opts(SecondsFormat::AutoSi, false)});
                    if let Some(zone) = time_zone {
                        v["timeZone"] = json!(zone.name());
                    }
                    v
                };
                (at(start), at(end))
            }
            Timing::AllDay { start, end } => (
                json!({"date": start.format("%Y-%m-%d").to_string()}),
                json!({"date": end.format("%Y-%m-%d").to_string()}),
            ),
        };
        let mut event = json!({
            "id": self.google_event_id(),
            "summary": self.title,
            "start": start,
            "end": end,
            "status": "confirmed",
            "extendedProperties": {"private": {
                EVENT_ID_PROPERTY: self.event_id,
                MARKER_PROPERTY: MARKER_VALUE,
            }},
        });
        if let Some(description) = &self.description {
            event["description"] = json!(description);
        }
        if let Some(location) = &self.location {
            event["location"] = json!(location);
        }
        if !self.recurrence.is_empty() {
            event["recurrence"] = json!(self.recurrence);
        }
        event
    }
}

/// Whether the copy Google `held` differs from the event calsync would write (`wanted`, from
/// [`EventRow::to_google_event`]) in what the row decides: someone changed it in Google. Times
/// compare as instants, since Google may give a `dateTime` back in another offset.
pub fn google_copy_differs(held: &Value, wanted: &Value) -> bool {
    let text = |event: &Value, field: &str| {
        event[field]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let moment = |event: &Value, field: &str| {
        let at = &event[field];
        let instant = at["dateTime"]
            .as_str()
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
        (
            instant,
            at["date"].as_str().map(str::to_string),
            at["timeZone"].as_str().map(str::to_string),
        )
    };
    let recurrence = |event: &Value| event["recurrence"].as_array().cloned().unwrap_or_default();
    ["summary", "description", "location", "status"]
        .iter()
        .any(|f| text(held, f) != text(wanted, f))
        || ["start", "end"]
            .iter()
            .any(|f| moment(held, f) != moment(wanted, f))
        || recurrence(held) != recurrence(wanted)
}

/// The Google event id of the app's `event_id`: lowercase base32hex (`[0-9a-v]`, which Google
/// accepts for client-chosen ids) of the SHA-256 of the event id, 52 characters. It depends on
/// nothing but the event id, so a redelivered insert hits the same id (409) instead of making a
/// second event, and a row moved to another user or calendar keeps its id. Hashing keeps any
/// event id (any length, any characters) inside Google's 5..=1024 character rule.
pub fn google_event_id(event_id: &str) -> String {
    BASE32HEX_NOPAD
        .encode(&Sha256::digest(event_id.as_bytes()))
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_dynamo::AttributeValue as A;
    use std::collections::HashMap;

    fn item(pairs: &[(&str, &str)]) -> serde_dynamo::Item {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), A::S(v.to_string())))
            .collect::<HashMap<_, _>>()
            .into()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("event_id", "ev-1"),
            ("user_id", "u1"),
            ("title", "Standup"),
            ("start", "2026-12-01T09:00:00+01:00"),
            ("end", "2026-12-01T09:15:00+01:00"),
        ]
    }

    fn with(extra: &[(&'static str, &'static str)]) -> serde_dynamo::Item {
        let mut pairs = base();
        for (k, v) in extra {
            pairs.retain(|(name, _)| name != k);
            pairs.push((k, v));
        }
        item(&pairs)
    }

    #[test]
    fn event_id_is_deterministic_base32hex() {
        let id = google_event_id("ev-1");
        assert_eq!(id, google_event_id("ev-1"));
        assert_ne!(id, google_event_id("ev-2"));
        assert_eq!(id.len(), 52);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='v').contains(&c))
        );
    }

    #[test]
    fn timed_row_maps_to_google_event() {
        let row = EventRow::from_image(
            "ev-1",
            &with(&[
                ("time_zone", "Europe/Berlin"),
                ("location", "Room 1"),
                ("ignored", "x"),
            ]),
        )
        .unwrap();
        let event = row.to_google_event();
        assert_eq!(event["summary"], "Standup");
        assert_eq!(event["start"]["dateTime"], "2026-12-01T09:00:00+01:00");
        assert_eq!(event["start"]["timeZone"], "Europe/Berlin");
        assert_eq!(event["end"]["timeZone"], "Europe/Berlin");
        assert_eq!(event["location"], "Room 1");
        assert!(event.get("description").is_none());
        assert_eq!(event["status"], "confirmed");
        assert_eq!(event["id"], google_event_id("ev-1"));
        assert_eq!(
            event["extendedProperties"]["private"]["calsync_event_id"],
            "ev-1"
        );
        assert_eq!(row.calendar_id, "primary");
    }

    #[test]
    fn all_day_row_maps_to_dates() {
        let row = EventRow::from_image(
            "ev-1",
            &with(&[("start", "2026-12-24"), ("end", "2026-12-27")]),
        )
        .unwrap();
        let event = row.to_google_event();
        assert_eq!(event["start"], json!({"date": "2026-12-24"}));
        assert_eq!(event["end"], json!({"date": "2026-12-27"}));
    }

    #[test]
    fn invalid_rows_say_why() {
        let no_title = {
            let mut i = with(&[]);
            i.remove("title");
            i
        };
        assert_eq!(
            EventRow::from_image("e", &no_title),
            Err(RowError::Missing("title"))
        );
        assert_eq!(
            EventRow::from_image("e", &with(&[("end", "2026-12-01T08:00:00+01:00")])),
            Err(RowError::EndNotAfterStart)
        );
        assert_eq!(
            EventRow::from_image("e", &with(&[("time_zone", "Mars/Olympus")])),
            Err(RowError::UnknownZone("Mars/Olympus".into()))
        );
        assert_eq!(
            EventRow::from_image("e", &with(&[("end", "2026-12-02")])),
            Err(RowError::MixedKinds)
        );
        assert!(matches!(
            EventRow::from_image("e", &with(&[("start", "2026-12-01 09:00")])),
            Err(RowError::BadTime { field: "start", .. })
        ));
        let mut recurring = with(&[]);
        recurring.insert(
            "recurrence".into(),
            A::L(vec![A::S("RRULE:FREQ=DAILY".into())]),
        );
        assert_eq!(
            EventRow::from_image("e", &recurring),
            Err(RowError::RecurrenceWithoutZone)
        );
        let mut bad_line = with(&[("time_zone", "UTC")]);
        bad_line.insert("recurrence".into(), A::L(vec![A::S("FREQ=DAILY".into())]));
        assert!(matches!(
            EventRow::from_image("e", &bad_line),
            Err(RowError::BadRecurrence(_))
        ));
        let mut wrong_type = with(&[]);
        wrong_type.insert("title".into(), A::N("3".into()));
        assert!(matches!(
            EventRow::from_image("e", &wrong_type),
            Err(RowError::Unreadable(_))
        ));
    }

    #[test]
    fn recurring_row_with_zone_keeps_its_rules() {
        let mut recurring = with(&[("time_zone", "America/New_York")]);
        recurring.insert(
            "recurrence".into(),
            A::L(vec![
                A::S("RRULE:FREQ=WEEKLY;COUNT=3".into()),
                A::S("EXDATE:20261208T090000Z".into()),
            ]),
        );
        let event = EventRow::from_image("e", &recurring)
            .unwrap()
            .to_google_event();
        assert_eq!(
            event["recurrence"],
            json!(["RRULE:FREQ=WEEKLY;COUNT=3", "EXDATE:20261208T090000Z"])
        );
    }

    #[test]
    fn only_synced_attributes_count_as_changes() {
        let old = with(&[("color", "red")]);
        assert!(!synced_fields_changed(&old, &with(&[("color", "blue")])));
        assert!(synced_fields_changed(&old, &with(&[("title", "Retro")])));
        assert!(synced_fields_changed(
            &old,
            &with(&[("calendar_id", "work@example.com")])
        ));
    }

    #[test]
    fn google_copies_differ_only_in_what_the_row_decides() {
        let wanted = EventRow::from_image("e", &with(&[("description", "Notes")]))
            .unwrap()
            .to_google_event();
        // Google's additions and another offset for the same instants are no change.
        let mut held = wanted.clone();
        held["etag"] = json!("\"3\"");
        held["start"]["dateTime"] = json!(
            DateTime::parse_from_rfc3339(wanted["start"]["dateTime"].as_str().unwrap())
                .unwrap()
                .with_timezone(&FixedOffset::east_opt(3600).unwrap())
                .to_rfc3339()
        );
        assert!(!google_copy_differs(&held, &wanted));
        assert_eq!(
            wanted["extendedProperties"]["private"][MARKER_PROPERTY],
            MARKER_VALUE
        );
        for (field, value) in [
            ("summary", json!("Retitled in Google")),
            ("description", Value::Null),
            ("status", json!("cancelled")),
            ("recurrence", json!(["RRULE:FREQ=DAILY"])),
        ] {
            let mut changed = held.clone();
            changed[field] = value;
            assert!(google_copy_differs(&changed, &wanted), "{field}");
        }
        let mut moved = held.clone();
        moved["end"]["dateTime"] = json!("2030-01-01T00:00:00Z");
        assert!(google_copy_differs(&moved, &wanted));
    }

    #[test]
    fn placement_reads_user_and_calendar_even_from_invalid_rows() {
        let mut invalid = with(&[("calendar_id", "team")]);
        invalid.remove("title");
        assert_eq!(
            placement(&invalid),
            Placement {
                user_id: Some("u1".into()),
                calendar_id: "team".into()
            }
        );
    }
}
