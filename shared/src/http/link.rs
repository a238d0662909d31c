//! The cross-site connect handshake: `POST /oauth/google/connect-links` (authorizer) mints a
//! single-use connect link; `POST /oauth/google/connect` (no authorizer) is where the app's page
//! sends the browser with it, as a top-level form POST.
//!
//! Why two steps: the app's page holds only a bearer JWT, which a top-level navigation cannot
//! carry, and the browser-binding cookie must be set first-party (on a navigation to the API's
//! own site) because browsers drop cookies on cross-site subresource answers. So the page mints a
//! link with `fetch` and its `Authorization` header, then submits a form to the API, whose answer
//! sets the cookie and sends the browser to Google.
//!
//! Why the form POST and the `Origin` check: a link is a bearer credential for its minter. An
//! attacker can mint one for their own app user and try to make a victim's browser open it, so
//! the victim's Google account would land on the attacker's app user (login CSRF). Opening a link
//! therefore needs something only the app's own pages have: a POST whose `Origin` (set by the
//! browser, not by the page) is one of `ALLOWED_RETURN_ORIGINS`. A link in an email, an `<img>`,
//! a redirect or a form on another site never passes; only script running on the app's origin
//! can, and such script already acts as the signed-in user. The origin is checked before the link
//! is consumed, so a refused attempt does not burn a real user's link.

use chrono::{SecondsFormat, Utc};
use lambda_http::{Body, Request, Response, http::StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use url::Url;

use super::{StartDeps, identity, responses, return_to, start};
use crate::flows::{FlowStore, new_link};

/// The path of the route that consumes a link, next to the callback on the API's host.
pub const CONNECT_PATH: &str = "connect";

/// Why a link could not be opened (logged; the browser sees the code).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("the request's Origin is missing or not an allowed app origin")]
    OriginNotAllowed,
    #[error("the form carries no link")]
    NoLink,
    #[error("the link is unknown or already used")]
    UnknownOrUsed,
    #[error("the link expired")]
    Expired,
}

impl OpenError {
    fn status(&self) -> StatusCode {
        match self {
            Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::NoLink | Self::UnknownOrUsed | Self::Expired => StatusCode::BAD_REQUEST,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::NoLink | Self::UnknownOrUsed | Self::Expired => "invalid_link",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Self::OriginNotAllowed => {
                "A calendar connection can only be started from the app's own page."
            }
            _ => {
                "This connection link is unknown, expired or already used. Start connecting your calendar again from the app."
            }
        }
    }
}

/// The URL the app's page submits its form to: the callback's sibling, so the cookie it sets
/// lives on the very host Google sends the browser back to.
pub fn connect_url(redirect_uri: &Url) -> Url {
    redirect_uri
        .join(CONNECT_PATH)
        .expect("a relative path joins onto the redirect URI")
}

/// The request body as text (API Gateway may hand a form body base64-decoded as binary).
fn body_text(request: &Request) -> Option<&str> {
    match request.body() {
        Body::Text(text) => Some(text),
        Body::Binary(bytes) => std::str::from_utf8(bytes).ok(),
        _ => None,
    }
}

/// `POST /oauth/google/connect-links`: a link for the signed-in user, optionally with
/// `{"return_to": URL}` as JSON.
pub async fn mint<F: FlowStore>(deps: &StartDeps<F>, request: Request) -> Response<Body> {
    let Some(user_id) = identity::user_id(&request) else {
        tracing::info!(
            outcome = "unauthorized",
            "link refused: no authorizer identity"
        );
        return responses::unauthorized();
    };
    let body = body_text(&request).unwrap_or("").trim();
    let requested: serde_json::Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_str(body) {
            Ok(value @ serde_json::Value::Object(_)) => value,
            _ => {
                tracing::info!(user_id, outcome = "invalid_request", "link refused: body");
                return responses::json_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the body must be empty or a JSON object such as {\"return_to\": \"https://...\"}",
                );
            }
        }
    };
    let return_to = match &requested["return_to"] {
        serde_json::Value::Null => deps.config.oauth.default_return_url.clone(),
        serde_json::Value::String(raw) => {
            match return_to::validate(raw, &deps.config.oauth.allowed_return_origins) {
                Ok(url) => url,
                Err(error) => {
                    tracing::info!(user_id, outcome = "invalid_return_to", reason = %error, "link refused");
                    return start::invalid_return_to();
                }
            }
        }
        _ => {
            tracing::info!(
                user_id,
                outcome = "invalid_return_to",
                "link refused: not a string"
            );
            return start::invalid_return_to();
        }
    };
    let (link, token) = new_link(&user_id, return_to.as_str(), Utc::now());
    if let Err(error) = deps.flows.create_link(&token, &link).await {
        tracing::error!(user_id, outcome = "store_failed", %error, "link failed");
        return responses::internal("could not create the connect link; try again");
    }
    tracing::info!(user_id, outcome = "link_created", "connect link created");
    responses::json(
        StatusCode::CREATED,
        json!({
            "connect_url": connect_url(&deps.config.oauth.redirect_uri).as_str(),
            "link": token.expose_secret(),
            "expires_at": link.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
        None,
    )
}

/// Whether the request's `Origin` is one of the allowed app origins. A missing `Origin`, `null`
/// (sandboxed frames, redirect chains through another origin) and anything unparsable fail.
fn origin_allowed(request: &Request, allowed: &[String]) -> bool {
    let values: Vec<_> = request.headers().get_all("origin").iter().collect();
    let [value] = values.as_slice() else {
        return false;
    };
    let Some(origin) = value
        .to_str()
        .ok()
        .and_then(|v| Url::parse(v).ok())
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .map(|url| url.origin().ascii_serialization())
    else {
        return false;
    };
    allowed.contains(&origin)
}

/// The `link` field of the form body; one, non-empty.
fn form_link(request: &Request) -> Option<SecretString> {
    let body = body_text(request)?;
    let mut links = url::form_urlencoded::parse(body.as_bytes()).filter(|(name, _)| name == "link");
    let (_, first) = links.next()?;
    if links.next().is_some() || first.is_empty() || first.len() > 128 {
        return None;
    }
    Some(SecretString::from(first.into_owned()))
}

fn refused(request: &Request, error: OpenError) -> Response<Body> {
    tracing::info!(outcome = error.code(), reason = %error, "connect link refused");
    responses::error_for(request, error.status(), error.code(), error.message())
}

/// `POST /oauth/google/connect` (form field `link`): consumes the link, starts a flow for its
/// user, sets the binding cookie first-party and answers `303` to Google's consent page.
pub async fn open<F: FlowStore>(deps: &StartDeps<F>, request: Request) -> Response<Body> {
    if !origin_allowed(&request, &deps.config.oauth.allowed_return_origins) {
        return refused(&request, OpenError::OriginNotAllowed);
    }
    let Some(token) = form_link(&request) else {
        return refused(&request, OpenError::NoLink);
    };
    let link = match deps.flows.consume_link(&token).await {
        Ok(Some(link)) => link,
        Ok(None) => return refused(&request, OpenError::UnknownOrUsed),
        Err(error) => {
            tracing::error!(outcome = "store_failed", %error, "opening a connect link failed");
            return responses::internal("could not read the connect link; try again");
        }
    };
    if link.is_expired(Utc::now()) {
        return refused(&request, OpenError::Expired);
    }
    let return_to = Url::parse(&link.return_to).expect("return_to was validated when minted");
    match start::begin_flow(deps, &link.user_id, &return_to).await {
        Ok((url, cookie)) => responses::see_other(url.as_str(), Some(cookie)),
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: &[&str], body: &str) -> Request {
        let mut builder = lambda_http::http::Request::builder().method("POST");
        for o in origin {
            builder = builder.header("origin", *o);
        }
        builder.body(Body::from(body.to_string())).unwrap()
    }

    #[test]
    fn only_one_allowed_origin_passes() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &request(&["https://app.example"], ""),
            &allowed
        ));
        assert!(origin_allowed(
            &request(&["https://APP.example:443"], ""),
            &allowed
        ));
        for refused in [
            &[][..],
            &["null"],
            &["https://evil.example"],
            &["http://app.example"],
            &["https://app.example.evil.example"],
            &["https://app.example", "https://app.example"],
        ] {
            assert!(
                !origin_allowed(&request(refused, ""), &allowed),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn the_form_carries_exactly_one_link() {
        assert_eq!(
            form_link(&request(&[], "link=abc")).map(|l| l.expose_secret().to_string()),
            Some("abc".to_string())
        );
        assert!(form_link(&request(&[], "link=a&link=b")).is_none());
        assert!(form_link(&request(&[], "link=")).is_none());
        assert!(form_link(&request(&[], "other=1")).is_none());
    }

    #[test]
    fn the_connect_url_is_the_callbacks_sibling() {
        let redirect =
            Url::parse("https://abc.execute-api.eu-west-1.amazonaws.com/oauth/google/callback")
                .unwrap();
        assert_eq!(
            connect_url(&redirect).as_str(),
            "https://abc.execute-api.eu-west-1.amazonaws.com/oauth/google/connect"
        );
    }
}
