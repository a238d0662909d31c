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
    sync_state::{Expected, Sequence, SyncStateStore, SyncStatus},
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
        let mut failures: Vec<(Sequence, String)> = futures::stream::iter(groups)
            .map(|group| async move { self.sync_group(tokens, group, deadline).await })
            .buffer_unordered(self.concurrency.max(1))
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        failures.sort();
        failures.into_iter().map(|(_, text)| text).collect()
    }

    /// Applies one event's records in order; returns the record that failed, if one did.
    async fn sync_group(
        &self,
        tokens: &Tokens<'_, P>,
        group: Group,
        deadline: Deadline,
    ) -> Option<(Sequence, String)> {
        let event_id = group.event_id.as_str();
        let first = group.changes.first()?;
        let mut current = match self.states.get(event_id).await {
            Ok(state) => state,
            Err(error) => {
                tracing::error!(event_id, %error, "cannot read the sync state");
                metrics::count(Metric::RecordsFailed);
                return Some((first.sequence.clone(), first.sequence_text.clone()));
            }
        };
        for change in &group.changes {
            let last = current.as_ref().and_then(|s| s.last_sequence.as_ref());
            if last.is_some_and(|last| &change.sequence <= last) {
                tracing::info!(
                    event_id,
                    sequence = change.sequence_text,
                    "already applied; skipped"
                );
                metrics::count(Metric::RecordsSkipped);
                continue;
            }
            let applied = match change.kind {
                Kind::Remove => Change::Remove {
                    old_image: Some(&change.old_image),
                },
                Kind::Insert => Change::Upsert {
                    image: &change.new_image,
                    old_image: None,
                },
                Kind::Modify => Change::Upsert {
                    image: &change.new_image,
                    old_image: Some(&change.old_image),
                },
            };
            let result = self
                .apply(tokens, event_id, current.as_ref(), applied, deadline)
                .await;
            let mut next = match result {
                Ok(next) => next,
                Err(RecordFailure(reason)) => {
                    tracing::warn!(
                        event_id,
                        sequence = change.sequence_text,
                        reason,
                        "record failed; Lambda will retry it"
                    );
                    metrics::count(Metric::RecordsFailed);
                    return Some((change.sequence.clone(), change.sequence_text.clone()));
                }
            };
            next.last_sequence = Some(change.sequence.clone());
            if let Err(error) = self
                .states
                .put(&next, &Expected::of(current.as_ref()))
                .await
            {
                tracing::warn!(event_id, sequence = change.sequence_text, %error, "cannot store the sync state; Lambda will retry the record");
                metrics::count(Metric::RecordsFailed);
                return Some((change.sequence.clone(), change.sequence_text.clone()));
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
        }
        None
    }
}
