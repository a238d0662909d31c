//! The event-sync handler: DynamoDB stream batches applied to Google Calendar in order, idempotently, with parking and replay.
