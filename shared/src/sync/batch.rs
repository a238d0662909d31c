//! One stream batch: records grouped by event id, each group applied in stream order, groups run
//! concurrently up to the configured limit, and the failed records named.
//!
//! Within a group, a record whose sequence number is not above the last applied one (stored in the
//! sync state) is skipped, so redelivery is harmless. When a record fails, the group stops: its
//! later records are not applied in this invocation (Lambda redelivers them after the failed one).
//! A record without an `event_id` key or a sequence number cannot be ordered or retried usefully;
//! it is logged and skipped (DynamoDB never produces one; a hand-made event can).

use aws_lambda_events::event::dynamodb::EventRecord;
use futures::StreamExt;

use super::{
    SyncPorts, Syncer, Tokens,
    apply::{Change, RecordFailure},
    retry::Deadline,
};
use crate::{
    metrics::{self, Metric},
    sync_state::{Expected, Sequence, StateError, SyncState, SyncStateStore, SyncStatus},
    tokens::TokenProvider,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Insert,
    Modify,
    Remove,
}

/// A stream record, checked.
#[derive(Debug, Clone)]
pub struct StreamChange {
    pub event_id: String,
    pub sequence: Sequence,
    /// The `SequenceNumber` exactly as received, for `batchItemFailures`.
    pub sequence_text: String,
    pub kind: Kind,
    pub new_image: serde_dynamo::Item,
    pub old_image: serde_dynamo::Item,
}

/// The records of one event id, in stream order.
#[derive(Debug, Clone)]
pub struct Group {
    pub event_id: String,
    pub changes: Vec<StreamChange>,
}

/// Why a record was skipped as poison.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonRecord {
    #[error("stream record {index} has no string `event_id` key")]
    NoEventId { index: usize },
    #[error("stream record {index} has no usable SequenceNumber")]
    NoSequence { index: usize },
    #[error("stream record {index} has an unknown eventName {name:?}")]
    UnknownEventName { index: usize, name: String },
}

/// Checks and groups the records, keeping the stream order inside each group and the order of
/// first appearance between groups.
pub fn group_records(records: Vec<EventRecord>) -> (Vec<Group>, Vec<PoisonRecord>) {
    let mut groups: Vec<Group> = Vec::new();
    let mut index_of: std::collections::HashMap<String, usize> = Default::default();
    let mut poison = Vec::new();
    for (index, record) in records.into_iter().enumerate() {
        let event_id = match record.change.keys.get("event_id") {
            Some(serde_dynamo::AttributeValue::S(id)) if !id.is_empty() => id.clone(),
            _ => {
                poison.push(PoisonRecord::NoEventId { index });
                continue;
            }
        };
        let sequence_text = record.change.sequence_number.clone().unwrap_or_default();
        let Some(sequence) = Sequence::parse(&sequence_text) else {
            poison.push(PoisonRecord::NoSequence { index });
            continue;
        };
        let kind = match record.event_name.as_str() {
            "INSERT" => Kind::Insert,
            "MODIFY" => Kind::Modify,
            "REMOVE" => Kind::Remove,
            other => {
                poison.push(PoisonRecord::UnknownEventName {
                    index,
                    name: other.chars().take(32).collect(),
                });
                continue;
            }
        };
        let change = StreamChange {
            event_id: event_id.clone(),
            sequence,
            sequence_text,
            kind,
            new_image: record.change.new_image,
            old_image: record.change.old_image,
        };
        match index_of.get(&event_id) {
            Some(&i) => groups[i].changes.push(change),
            None => {
                index_of.insert(event_id.clone(), groups.len());
                groups.push(Group {
                    event_id,
                    changes: vec![change],
                });
            }
        }
    }
    (groups, poison)
}

/// The users a batch's rows name (old and new images), each once: the grants it reads at once.
fn users_of(groups: &[Group]) -> Vec<&str> {
    let mut users: Vec<&str> = groups
        .iter()
        .flat_map(|g| &g.changes)
        .flat_map(|c| [&c.new_image, &c.old_image])
        .filter_map(|image| match image.get("user_id") {
            Some(serde_dynamo::AttributeValue::S(user))
                if !user.is_empty() && user.len() <= MAX_KEY_BYTES =>
            {
                Some(user.as_str())
            }
            _ => None,
        })
        .collect();
    users.sort_unstable();
    users.dedup();
    users
}

/// DynamoDB's limit on a partition key.
const MAX_KEY_BYTES: usize = 2048;

/// Times one record is applied again after losing its state write to another writer (a resync,
/// or a batch read older than the stored state), before it fails for its redelivery.
const RACE_RETRIES: usize = 1;

impl<P: SyncPorts> Syncer<P> {
    /// Applies a batch; returns the `SequenceNumber`s to report in `batchItemFailures`.
    pub async fn sync_batch(&self, records: Vec<EventRecord>, deadline: Deadline) -> Vec<String> {
        let (groups, poison) = group_records(records);
        for p in &poison {
            tracing::error!(error = %p, "skipping a stream record that cannot be applied");
            metrics::count(Metric::RecordsPoison);
        }
        let tokens = TokenProvider::new(&self.grants, &self.refresher);
        let tokens = &tokens;
        let users = users_of(&groups);
        let (read, ()) = futures::join!(self.read_states(&groups), tokens.prefetch(&users));
        let mut failures: Vec<(Sequence, String)> =
            futures::stream::iter(groups.into_iter().zip(read))
                .map(|(group, state)| async move {
                    self.sync_group(tokens, group, state, deadline).await
                })
                .buffer_unordered(self.concurrency.max(1))
                .filter_map(|failed| async move { failed })
                .collect()
                .await;
        failures.sort();
        failures.into_iter().map(|(_, text)| text).collect()
    }

    /// Each group's stored state, read for the whole batch at once ([`SyncStateStore::get_many`]):
    /// the conditional write after each record still guards against whatever changes it since.
    async fn read_states(&self, groups: &[Group]) -> Vec<Result<Option<SyncState>, StateError>> {
        // A key DynamoDB cannot hold (only a hand-made event has one) would fail the whole read.
        let storable = |id: &str| id.len() <= MAX_KEY_BYTES;
        let ids: Vec<&str> = groups.iter().map(|g| g.event_id.as_str()).collect();
        let asked: Vec<&str> = ids.iter().copied().filter(|id| storable(id)).collect();
        match self.states.get_many(&asked).await {
            Ok(mut found) => ids
                .iter()
                .map(|id| {
                    if storable(id) {
                        return found.remove(*id).transpose();
                    }
                    Err(StateError::Store(format!(
                        "the event_id is longer than DynamoDB's {MAX_KEY_BYTES}-byte key limit, so it has no sync state; the record cannot be applied"
                    )))
                })
                .collect(),
            Err(error) => {
                let text = match error {
                    StateError::Store(text) => text,
                    other => other.to_string(),
                };
                ids.iter()
                    .map(|_| Err(StateError::Store(text.clone())))
                    .collect()
            }
        }
    }

    /// Applies one event's records in order, from its stored state `read`; returns the record
    /// that failed, if one did.
    async fn sync_group(
        &self,
        tokens: &Tokens<'_, P>,
        group: Group,
        read: Result<Option<SyncState>, StateError>,
        deadline: Deadline,
    ) -> Option<(Sequence, String)> {
        let event_id = group.event_id.as_str();
        let first = group.changes.first()?;
        let mut current = match read {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(event_id, %error, "cannot read the sync state");
                metrics::count(Metric::RecordsFailed);
                return Some((first.sequence.clone(), first.sequence_text.clone()));
            }
        };
        for change in &group.changes {
            let mut races = 0;
            loop {
                let last = current.as_ref().and_then(|s| s.last_sequence.as_ref());
                if last.is_some_and(|last| &change.sequence <= last) {
                    tracing::info!(
                        event_id,
                        sequence = change.sequence_text,
                        "already applied; skipped"
                    );
                    metrics::count(Metric::RecordsSkipped);
                    break;
                }
                let fail = |reason: &dyn std::fmt::Display| {
                    tracing::warn!(
                        event_id,
                        sequence = change.sequence_text,
                        %reason,
                        "record failed; Lambda will retry it"
                    );
                    metrics::count(Metric::RecordsFailed);
                    Some((change.sequence.clone(), change.sequence_text.clone()))
                };
                let mut next = match self
                    .apply(
                        tokens,
                        event_id,
                        current.as_ref(),
                        change.as_change(),
                        deadline,
                    )
                    .await
                {
                    Ok(next) => next,
                    Err(RecordFailure(reason)) => return fail(&reason),
                };
                next.last_sequence = Some(change.sequence.clone());
                match self
                    .states
                    .put(&next, &Expected::of(current.as_ref()))
                    .await
                {
                    Ok(()) => {}
                    // Someone else wrote the state since it was read: apply the record again
                    // from what is stored now (or skip it if that writer applied it already).
                    Err(StateError::Conflict { .. }) if races < RACE_RETRIES => {
                        races += 1;
                        match self.states.get(event_id).await {
                            Ok(stored) => current = stored,
                            Err(error) => return fail(&error),
                        }
                        continue;
                    }
                    Err(error) => return fail(&error),
                }
                tracing::info!(
                    event_id,
                    sequence = change.sequence_text,
                    status = next.status.as_str(),
                    "applied"
                );
                metrics::count(match next.status {
                    SyncStatus::Synced | SyncStatus::Deleted => Metric::RecordsSynced,
                    SyncStatus::NeedsReauth | SyncStatus::NotConnected => Metric::RecordsParked,
                    SyncStatus::Invalid => Metric::RecordsInvalid,
                });
                current = Some(next);
                break;
            }
        }
        None
    }
}

impl StreamChange {
    /// What the record asks of Google.
    fn as_change(&self) -> Change<'_> {
        match self.kind {
            Kind::Remove => Change::Remove {
                old_image: Some(&self.old_image),
            },
            Kind::Insert => Change::Upsert {
                image: &self.new_image,
                old_image: None,
            },
            Kind::Modify => Change::Upsert {
                image: &self.new_image,
                old_image: Some(&self.old_image),
            },
        }
    }
}
