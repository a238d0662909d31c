//! The browser-facing consent step: `GET o/oauth2/v2/auth` renders the account chooser and the
//! granular scope checkboxes, `POST o/oauth2/v2/auth/decision` applies the choice and redirects.
//! Invalid requests get Google's error page ("Error 400: redirect_uri_mismatch") and no redirect.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::oauth::{AuthorizationError, AuthorizationRequest, Decision, decide, is_identity_scope};
use crate::state::SharedState;

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn error_page(error: &AuthorizationError) -> Response {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Error {code}: {name}</title></head>\
         <body><h1>Access blocked: authorization error</h1>\
         <p id=\"error\">Error {code}: {name}</p><p id=\"description\">{description}</p></body></html>",
        code = error.status.as_u16(),
        name = error.error,
        description = escape(&error.description),
    );
    (error.status, Html(body)).into_response()
}

/// `GET o/oauth2/v2/auth`.
pub async fn consent_page(
    State(shared): State<SharedState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let world = shared.lock();
    let request = match AuthorizationRequest::parse(&world, &params) {
        Ok(request) => request,
        Err(error) => return error_page(&error),
    };
    let query = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    let mut accounts = String::new();
    for (index, email) in world.accounts.keys().enumerate() {
        let checked = match &request.login_hint {
            Some(hint) => hint == email,
            None => index == 0,
        };
        accounts.push_str(&format!(
            "<li><label><input type=\"radio\" name=\"account\" value=\"{e}\"{c}> {e}</label></li>",
            e = escape(email),
            c = if checked { " checked" } else { "" },
        ));
    }
    let mut scopes = String::new();
    for scope in &request.scopes {
        if is_identity_scope(scope) {
            scopes.push_str(&format!("<li>{} (always shared)</li>", escape(scope)));
        } else {
            scopes.push_str(&format!(
                "<li><label><input type=\"checkbox\" name=\"scope\" value=\"{s}\" checked> {s}</label></li>",
                s = escape(scope)
            ));
        }
    }
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in - Google Accounts (emulator)</title></head>\
         <body><h1>Choose an account to continue</h1>\
         <form method=\"post\" action=\"auth/decision\">\
         <input type=\"hidden\" name=\"request\" value=\"{query}\">\
         <ul id=\"accounts\">{accounts}</ul>\
         <p>The app wants to:</p><ul id=\"scopes\">{scopes}</ul>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Cancel</button>\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Continue</button>\
         </form></body></html>",
        query = escape(&query),
    );
    Html(body).into_response()
}

/// `POST o/oauth2/v2/auth/decision`: the consent form's submission.
pub async fn consent_decision(State(shared): State<SharedState>, body: Bytes) -> Response {
    let mut request_query = None;
    let mut account = None;
    let mut decision = None;
    let mut ticked = Vec::new();
    for (key, value) in url::form_urlencoded::parse(&body) {
        match key.as_ref() {
            "request" => request_query = Some(value.into_owned()),
            "account" => account = Some(value.into_owned()),
            "decision" => decision = Some(value.into_owned()),
            "scope" => ticked.push(value.into_owned()),
            _ => {}
        }
    }
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(request_query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let mut world = shared.lock();
    let request = match AuthorizationRequest::parse(&world, &params) {
        Ok(request) => request,
        Err(error) => return error_page(&error),
    };
    let decision = match (decision.as_deref(), account) {
        (Some("deny"), _) => Decision::Deny,
        (Some("allow"), Some(email)) => Decision::Allow {
            email,
            removed_scopes: request
                .scopes
                .iter()
                .filter(|s| !is_identity_scope(s) && !ticked.contains(s))
                .cloned()
                .collect(),
        },
        _ => {
            return error_page(&AuthorizationError {
                status: StatusCode::BAD_REQUEST,
                error: "invalid_request",
                description: "Choose an account and Continue or Cancel.".to_owned(),
            });
        }
    };
    match decide(&mut world, &request, &decision) {
        Ok(location) => (
            StatusCode::FOUND,
            [(header::LOCATION, location.to_string())],
        )
            .into_response(),
        Err(error) => error_page(&error),
    }
}
