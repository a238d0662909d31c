//! A fault proxy in front of an HTTP service (moto's server, for DynamoDB and Secrets Manager):
//! it forwards each request, or fails it the way the real service or network fails, switchable
//! while a test runs. Point an SDK at [`FaultProxy::endpoint`] instead of the service.
//!
//! It speaks just enough HTTP/1.1 for the AWS SDK (`Content-Length` bodies, keep-alive), so a
//! fault can also end a connection the client already holds, as a network failure would.
//!
//! It also counts what it forwards, by AWS operation (`X-Amz-Target`, else the HTTP method), with
//! the time the service and the proxy took to answer: the benchmark's DynamoDB calls per record,
//! and the emulators' own time it subtracts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

/// What the proxy does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward it and relay the answer.
    Forward,
    /// Answer as DynamoDB does when it throttles: HTTP 400 with `ThrottlingException`.
    Throttle,
    /// Answer HTTP 500 with the service's `InternalServerError` body.
    ServerError,
    /// Close the connection without an answer (the service is unreachable).
    Refuse,
    /// Never answer (the client's timeout decides).
    Hang,
}

#[derive(Debug)]
struct Plan {
    now: Fault,
    /// After this many more forwarded requests, switch to the fault.
    then: Option<(usize, Fault)>,
    forwarded: usize,
    faulted: usize,
    calls: BTreeMap<String, Calls>,
}

/// Requests forwarded for one operation, and the time from having read each to having relayed
/// its answer (the service's time and the proxy's own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub count: usize,
    pub upstream: Duration,
    /// From the first request read to the last answer relayed: the time a caller waited for
    /// calls it made at once (`upstream` counts their overlap twice).
    pub span: Option<(Instant, Instant)>,
}

impl Plan {
    /// What to do with the next request, counting it.
    fn next(&mut self) -> Fault {
        if self.now == Fault::Forward
            && let Some((left, fault)) = self.then
        {
            if left == 0 {
                self.now = fault;
                self.then = None;
            } else {
                self.then = Some((left - 1, fault));
            }
        }
        match self.now {
            Fault::Forward => self.forwarded += 1,
            _ => self.faulted += 1,
        }
        self.now
    }
}

/// A running proxy; it stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    plan: Arc<Mutex<Plan>>,
    _tasks: JoinSet<()>,
}

impl FaultProxy {
    /// A proxy to `target` (e.g. `http://127.0.0.1:5000`), forwarding until told otherwise.
    pub async fn start(target: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fault proxy")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let plan = Arc::new(Mutex::new(Plan {
            now: Fault::Forward,
            then: None,
            forwarded: 0,
            faulted: 0,
            calls: BTreeMap::new(),
        }));
        let mut tasks = JoinSet::new();
        let (target, shared) = (target.trim_end_matches('/').to_string(), plan.clone());
        tasks.spawn(async move {
            let http = reqwest::Client::new();
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (http, target, plan) = (http.clone(), target.clone(), shared.clone());
                connections.spawn(async move {
                    // A connection that breaks mid-way is the client's to notice, as with AWS.
                    let _ = serve(stream, &http, &target, &plan).await;
                });
            }
        });
        Ok(Self {
            endpoint,
            plan,
            _tasks: tasks,
        })
    }

    /// Every request from now on meets `fault`.
    pub fn set(&self, fault: Fault) {
        let mut plan = self.plan.lock().unwrap();
        plan.now = fault;
        plan.then = None;
    }

    /// Forwards `requests` more requests, then every later one meets `fault`: a failure in the
    /// middle of whatever the client is doing.
    pub fn fail_after(&self, requests: usize, fault: Fault) {
        let mut plan = self.plan.lock().unwrap();
        plan.now = Fault::Forward;
        plan.then = Some((requests, fault));
    }

    /// Requests forwarded and requests failed so far.
    pub fn counts(&self) -> (usize, usize) {
        let plan = self.plan.lock().unwrap();
        (plan.forwarded, plan.faulted)
    }

    /// The requests forwarded since the last call, by operation; the count starts again.
    pub fn take_calls(&self) -> BTreeMap<String, Calls> {
        std::mem::take(&mut self.plan.lock().unwrap().calls)
    }
}

/// One request as read off the wire.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (
        parts.next().context("no method")?.to_string(),
        parts.next().context("no target")?.to_string(),
    );
    let mut headers = Vec::new();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').context("a malformed header")?;
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse()?;
        }
        headers.push((name, value));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

async fn serve(
    stream: TcpStream,
    http: &reqwest::Client,
    target: &str,
    plan: &Mutex<Plan>,
) -> Result<()> {
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader).await? {
        let (read, mut forwarded) = (Instant::now(), None);
        let fault = plan.lock().unwrap().next();
        let (status, headers, body) = match fault {
            Fault::Refuse => return Ok(()),
            Fault::Hang => std::future::pending().await,
            Fault::Throttle => aws_error(
                400,
                "com.amazonaws.dynamodb.v20120810#ThrottlingException",
                "Rate of requests exceeds the allowed throughput.",
            ),
            Fault::ServerError => aws_error(
                500,
                "com.amazonaws.dynamodb.v20120810#InternalServerError",
                "Internal server error",
            ),
            Fault::Forward => {
                let operation = request
                    .headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("x-amz-target"))
                    .map_or_else(|| request.method.clone(), |(_, value)| value.clone());
                forwarded = Some(operation);
                forward(http, target, request).await?
            }
        };
        let stream = reader.get_mut();
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in &headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.flush().await?;
        if let Some(operation) = forwarded {
            let mut plan = plan.lock().unwrap();
            let calls = plan.calls.entry(operation).or_default();
            calls.count += 1;
            calls.upstream += read.elapsed();
            let (first, _) = calls.span.get_or_insert((read, read));
            calls.span = Some((*first, Instant::now()));
        }
    }
    Ok(())
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

fn aws_error(status: u16, kind: &str, message: &str) -> Answer {
    let body = serde_json::json!({"__type": kind, "message": message}).to_string();
    let headers = vec![
        (
            "content-type".to_string(),
            "application/x-amz-json-1.0".to_string(),
        ),
        ("x-amzn-requestid".to_string(), "fault-proxy".to_string()),
    ];
    (status, headers, body.into_bytes())
}

async fn forward(http: &reqwest::Client, target: &str, request: Request) -> Result<Answer> {
    let method = reqwest::Method::from_bytes(request.method.as_bytes())?;
    let mut outgoing = http.request(method, format!("{target}{}", request.target));
    for (name, value) in &request.headers {
        if !["host", "content-length", "connection"].contains(&name.to_ascii_lowercase().as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = outgoing.body(request.body).send().await?;
    let status = answer.status().as_u16();
    let headers = answer
        .headers()
        .iter()
        .filter(|(name, _)| {
            !["content-length", "transfer-encoding", "connection"].contains(&name.as_str())
        })
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    Ok((status, headers, answer.bytes().await?.to_vec()))
}

fn reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}
