//! The resync queue (SQS): the adapter of [`JobQueue`] and its in-memory fake.

use std::sync::{Arc, Mutex};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::{
    aws::describe_error,
    resync::{Job, JobQueue, QueueError},
};

/// The resync queue in SQS.
#[derive(Clone, Debug)]
pub struct SqsJobQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsJobQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self { client, url }
    }
}

impl JobQueue for SqsJobQueue {
    /// At most 10 jobs (one SQS batch); any entry SQS refuses fails the whole send, and the
    /// caller's retry sends all again (jobs are idempotent).
    async fn send(&self, jobs: &[Job]) -> Result<(), QueueError> {
        let entries = jobs
            .iter()
            .enumerate()
            .map(|(i, job)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(serde_json::to_string(job).expect("a job serialises"))
                    .build()
                    .map_err(|e| QueueError(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let answer = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|e| QueueError(describe_error(&e)))?;
        match answer.failed.first() {
            None => Ok(()),
            Some(failed) => Err(QueueError(format!(
                "SQS refused {} of {} jobs: {} {}",
                answer.failed.len(),
                jobs.len(),
                failed.code,
                failed.message.as_deref().unwrap_or_default()
            ))),
        }
    }
}

/// Jobs in memory, for unit tests.
#[derive(Clone, Default)]
pub struct InMemoryJobQueue {
    jobs: Arc<Mutex<Vec<Job>>>,
}

impl InMemoryJobQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every job sent so far, in order; the queue is left empty.
    pub fn take(&self) -> Vec<Job> {
        std::mem::take(&mut self.jobs.lock().unwrap())
    }
}

impl JobQueue for InMemoryJobQueue {
    async fn send(&self, jobs: &[Job]) -> Result<(), QueueError> {
        self.jobs.lock().unwrap().extend_from_slice(jobs);
        Ok(())
    }
}
