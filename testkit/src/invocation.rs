//! A handler invocation as Lambda makes it, for tests that call a handler in process.

use lambda_http::lambda_runtime::{Context, LambdaEvent};

/// `payload` with a context whose deadline is `seconds` from now, as Lambda invokes a function
/// with that much time left.
pub fn with_deadline<T>(payload: T, seconds: i64) -> LambdaEvent<T> {
    let mut context = Context::default();
    context.deadline =
        (chrono::Utc::now() + chrono::Duration::seconds(seconds)).timestamp_millis() as u64;
    LambdaEvent::new(payload, context)
}
