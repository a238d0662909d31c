//! A local stand-in for Google's OAuth 2.0 and Calendar v3 endpoints, for tests and the demo.
//!
//! [`Emulator::start`] serves, on a loopback port, the consent step (`o/oauth2/v2/auth`), the
//! token endpoint (`token`), revoke (`revoke`), the Calendar events API (`calendar/v3/...`) and a
//! control API under `__emulator/` (see `README.md`). Everything lives in memory.

pub mod calendar;
pub mod control;
pub mod html;
pub mod oauth;
pub mod state;

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;

use crate::state::{Client, SharedState};

/// How long `shutdown` lets requests in flight (such as a delayed fault) finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on; port 0 picks a free one.
    pub bind: SocketAddr,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Entry point: `Emulator::start(Options::default()).await?`.
pub struct Emulator;

impl Emulator {
    /// Binds, starts serving in a background task and returns once the socket accepts requests.
    pub async fn start(options: Options) -> anyhow::Result<Running> {
        let listener = tokio::net::TcpListener::bind(options.bind).await?;
        let address = listener.local_addr()?;
        let base_url = Url::parse(&format!("http://{address}/"))?;
        let state = SharedState::new();
        let app = router(state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "google emulator stopped");
            }
        });
        Ok(Running {
            base_url,
            state,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// A running emulator. Dropping it stops the server.
pub struct Running {
    /// `http://127.0.0.1:PORT/` (with the trailing slash).
    pub base_url: Url,
    state: SharedState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// A URL under the emulator, e.g. `url("token")` or `url("__emulator/stats")`.
    pub fn url(&self, path: &str) -> Url {
        self.base_url
            .join(path)
            .expect("a relative path joins onto the base URL")
    }

    /// Registers an OAuth client directly (what `POST __emulator/clients` does).
    pub fn register_client(
        &self,
        client_id: &str,
        client_secret: &str,
        redirect_uris: Vec<String>,
    ) {
        self.state.lock().add_client(
            client_id,
            Client {
                client_secret: client_secret.to_owned(),
                redirect_uris,
            },
        );
    }

    /// Stops accepting requests and waits (at most a few seconds, then cuts them off) for
    /// requests in flight to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Open connections would keep a graceful shutdown waiting; a dropped emulator is done.
            task.abort();
        }
    }
}

/// Every route of the emulator.
pub fn router(state: SharedState) -> Router {
    let control = Router::new()
        .route("/clients", post(control::add_client))
        .route("/accounts", post(control::add_account))
        .route("/consent", post(control::consent))
        .route(
            "/clock",
            get(control::get_clock).post(control::advance_clock),
        )
        .route("/settings", post(control::settings))
        .route("/expire-access-tokens", post(control::expire_access_tokens))
        .route("/revoke", post(control::revoke_account))
        .route("/faults", post(control::add_fault))
        .route("/calendars", post(control::add_calendar))
        .route("/calendars/{email}", get(control::account_calendars))
        .route(
            "/calendars/{email}/{calendar_id}",
            delete(control::delete_calendar),
        )
        .route(
            "/calendars/{email}/{calendar_id}/events",
            get(control::calendar_events),
        )
        .route("/stats", get(control::stats))
        .route("/issued-secrets", get(control::issued_secrets))
        .route("/reset", post(control::reset));
    let calendar = Router::new()
        .route("/calendars", post(calendar::calendars_insert))
        .route(
            "/calendars/{calendar_id}",
            get(calendar::calendars_get).delete(calendar::calendars_delete),
        )
        .route(
            "/calendars/{calendar_id}/events",
            post(calendar::insert).get(calendar::list),
        )
        .route(
            "/calendars/{calendar_id}/events/{event_id}",
            get(calendar::get)
                .put(calendar::modify_route::<false>)
                .patch(calendar::modify_route::<true>)
                .delete(calendar::delete),
        );
    Router::new()
        .route("/o/oauth2/v2/auth", get(html::consent_page))
        .route("/o/oauth2/v2/auth/decision", post(html::consent_decision))
        .route("/token", post(oauth::token))
        .route("/revoke", post(oauth::revoke))
        .nest("/calendar/v3", calendar)
        .nest("/__emulator", control)
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// One line per request: method, path (never the query, which can hold a token), status, time.
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::info!(
        target: "google_emulator",
        %method,
        path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}
