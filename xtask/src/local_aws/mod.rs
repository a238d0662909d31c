//! The local stand-ins for AWS. [`stack`] is what CloudFormation would create, as long-running
//! processes. In front of the functions stand [`api_gateway`] (the HTTP API on `localhost`, with
//! the template's JWT authorizer and CORS), [`event_source_mapping`] (the poller feeding
//! event-sync from the Events table's stream) and [`queue_mapping`] (the SQS pollers feeding
//! the functions on queues); beside them, on a site of its own, [`app`] stands
//! in for the app and its identity provider ([`issuer`]). `cargo xtask stand-ins` runs all three
//! as one process of the stack, which `stack up` starts after the functions. It reads
//! `.dev/stack.json`.

pub mod api_gateway;
pub mod app;
pub mod event_source_mapping;
pub mod issuer;
pub mod queue_mapping;
pub mod stack;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, bail};

use testkit::{aws, template::Template};

use event_source_mapping::{MappingSettings, Poller, RieTarget};
use stack::State;

/// Binds a loopback port of the stand-ins.
async fn listen(port: u16, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .with_context(|| format!("binding {what} to 127.0.0.1:{port}"))
}

/// Runs the API Gateway, the app with its issuer, and the event source mapping until one fails.
pub async fn run(state: &State, options: &stack::Options) -> Result<()> {
    let template = Template::load_workspace()?;
    let routes = api_gateway::routes_from_template(&template)?;
    let ctx = stack::context(options)?;
    let api = template.http_api(&ctx)?;
    let issuer = stack::issuer(options)?;
    let invokers: HashMap<String, String> = state
        .functions
        .iter()
        .map(|(id, f)| (id.clone(), f.invoke_url.clone()))
        .collect();
    let listener = listen(options.front_port, "the HTTP front").await?;
    let app_listener = listen(options.app_port, "the app").await?;
    let api_url: url::Url = state.front_url.parse()?;
    let audience = api
        .jwt
        .as_ref()
        .and_then(|jwt| jwt.audience.first().cloned())
        .context("the HTTP API has no JWT audience")?;

    let stream_function = template
        .functions()?
        .into_iter()
        .find(|f| f.stream_mapping.is_some())
        .context("template.yaml has no function on a DynamoDB stream")?;
    let settings = MappingSettings::from_template_properties(
        stream_function
            .stream_mapping
            .as_ref()
            .expect("found above"),
    );
    let sdk = aws::local_sdk_config(&state.aws_endpoint).await;
    let events_table = state
        .env
        .get("EVENTS_TABLE")
        .context("the stack has no EVENTS_TABLE")?;
    let stream_arn =
        testkit::streams::stream_arn(&aws_sdk_dynamodb::Client::new(&sdk), events_table).await?;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    // The stack created every queue of the template.
    let queue_url = Template::queue_url(&ctx, "EventSyncFailureQueue");
    let mut queue_pollers = tokio::task::JoinSet::new();
    for function in template.functions()? {
        for (queue, properties) in &function.queue_mappings {
            let poller = queue_mapping::QueuePoller {
                sqs: sqs.clone(),
                queue_url: Template::queue_url(&ctx, queue),
                queue_arn: Template::queue_arn(&ctx, queue),
                batch_size: queue_mapping::QueuePoller::batch_size_of(properties),
                http: reqwest::Client::builder()
                    .timeout(queue_mapping::invoke_timeout(function.timeout_seconds))
                    .build()?,
                invoke_url: invokers
                    .get(&function.logical_id)
                    .with_context(|| format!("{} is not running", function.logical_id))?
                    .clone(),
            };
            queue_pollers.spawn(poller.run());
        }
    }
    let invoke_url = invokers
        .get(&stream_function.logical_id)
        .with_context(|| format!("{} is not running", stream_function.logical_id))?
        .clone();
    let poller = Poller {
        streams: testkit::streams::Streams::new(&state.aws_endpoint),
        settings,
        target: RieTarget {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(stream_function.timeout_seconds + 5))
                .build()?,
            invoke_url,
            sqs,
            queue_url,
            shard_id: String::new(),
            stream_arn,
            function_arn: format!(
                "arn:aws:lambda:{}:{}:function:{}",
                aws::REGION,
                aws::ACCOUNT_ID,
                stream_function.logical_id
            ),
        },
        idle_wait: Duration::from_millis(250),
    };
    println!(
        "gateway: HTTP front on {}, app on {}, polling {events_table}",
        state.front_url, state.app_url
    );
    tokio::select! {
        result = api_gateway::serve(listener, routes, invokers, api) => result.context("the local API Gateway stopped"),
        result = app::serve(app_listener, issuer, audience, &api_url) => result.context("the local app stopped"),
        result = poller.run() => {
            result.context("the local event source mapping stopped")?;
            bail!("the local event source mapping stopped")
        }
        Some(result) = queue_pollers.join_next() => {
            result?.context("a local SQS event source mapping stopped")?;
            bail!("a local SQS event source mapping stopped")
        }
    }
}
