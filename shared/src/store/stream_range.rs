//! The Events table's stream read again by shard and sequence range (DynamoDB Streams): the
//! adapter of [`StreamRange`] and its in-memory fake.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aws_sdk_dynamodbstreams::types::{AttributeValue, ShardIteratorType};

use crate::{
    aws::describe_error,
    resync::{RangeError, ShardRange, StreamRange, sequence_after},
};

/// GetRecords calls a range may take before it is handed to the sweep: a range Lambda gave up
/// on is one batch (at most a few hundred records, 1,000 a call), so this is only a bound
/// against an open shard that keeps answering with nothing.
const MAX_CALLS: usize = 50;

/// The attribute of an Events row that names its user.
const USER_ID: &str = "user_id";

/// The Events stream in DynamoDB Streams.
#[derive(Clone, Debug)]
pub struct DynamoStreamRange {
    client: aws_sdk_dynamodbstreams::Client,
}

impl DynamoStreamRange {
    pub fn new(client: aws_sdk_dynamodbstreams::Client) -> Self {
        Self { client }
    }
}

fn push_user(
    users: &mut Vec<String>,
    image: Option<&std::collections::HashMap<String, AttributeValue>>,
) {
    if let Some(AttributeValue::S(user)) = image.and_then(|image| image.get(USER_ID))
        && !users.contains(user)
    {
        users.push(user.clone());
    }
}

impl StreamRange for DynamoStreamRange {
    /// Any error (a trimmed range, an expired iterator, a stream that is gone, or a failure after
    /// the SDK's retries) hands the range to the sweep.
    async fn users_in(&self, range: &ShardRange) -> Result<Vec<String>, RangeError> {
        let mut iterator = self
            .client
            .get_shard_iterator()
            .stream_arn(&range.stream_arn)
            .shard_id(&range.shard_id)
            .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
            .sequence_number(&range.start)
            .send()
            .await
            .map_err(|e| RangeError(describe_error(&e)))?
            .shard_iterator;
        let mut users = Vec::new();
        for _ in 0..MAX_CALLS {
            let Some(current) = iterator else {
                // The shard is closed and read to its end.
                return Ok(users);
            };
            let page = self
                .client
                .get_records()
                .shard_iterator(current)
                .send()
                .await
                .map_err(|e| RangeError(describe_error(&e)))?;
            for record in page.records() {
                let Some(change) = record.dynamodb() else {
                    continue;
                };
                if change
                    .sequence_number()
                    .is_some_and(|n| sequence_after(n, &range.end))
                {
                    return Ok(users);
                }
                push_user(&mut users, change.new_image.as_ref());
                push_user(&mut users, change.old_image.as_ref());
                if change.sequence_number() == Some(range.end.as_str()) {
                    return Ok(users);
                }
            }
            iterator = page.next_shard_iterator;
        }
        Err(RangeError(format!(
            "the end of the range is not reached after {MAX_CALLS} reads"
        )))
    }
}

/// Per (stream ARN, shard id): each record's sequence number and the users it names.
type Shards = BTreeMap<(String, String), Vec<(String, Vec<String>)>>;

/// Stream records in memory: per stream and shard, the users each record names by sequence
/// number; `trim` makes every range unreadable, as the stream's retention does.
#[derive(Clone, Debug, Default)]
pub struct InMemoryStreamRange {
    records: Arc<Mutex<Shards>>,
    trimmed: Arc<Mutex<bool>>,
}

impl InMemoryStreamRange {
    pub fn new() -> Self {
        Self::default()
    }

    /// A record at `sequence` naming `users` (its new and old images').
    pub fn put(&self, stream_arn: &str, shard_id: &str, sequence: &str, users: &[&str]) {
        self.records
            .lock()
            .unwrap()
            .entry((stream_arn.to_string(), shard_id.to_string()))
            .or_default()
            .push((
                sequence.to_string(),
                users.iter().map(|u| u.to_string()).collect(),
            ));
    }

    pub fn trim(&self) {
        *self.trimmed.lock().unwrap() = true;
    }
}

impl StreamRange for InMemoryStreamRange {
    async fn users_in(&self, range: &ShardRange) -> Result<Vec<String>, RangeError> {
        if *self.trimmed.lock().unwrap() {
            return Err(RangeError("TrimmedDataAccessException".into()));
        }
        let records = self.records.lock().unwrap();
        let shard = records
            .get(&(range.stream_arn.clone(), range.shard_id.clone()))
            .ok_or_else(|| RangeError("ResourceNotFoundException".into()))?;
        let mut users = Vec::new();
        for (sequence, named) in shard {
            if sequence_after(&range.start, sequence) || sequence_after(sequence, &range.end) {
                continue;
            }
            for user in named {
                if !users.contains(user) {
                    users.push(user.clone());
                }
            }
        }
        Ok(users)
    }
}
