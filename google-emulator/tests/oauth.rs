//! Consent, token endpoint and revoke behaviour, over HTTP.

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn consent_allow_redirects_with_code_state_and_granted_scopes() {
    let h = Harness::start().await;
    let params = h.allow(&h.auth_url(&[]), ALICE).await;
    assert!(param(&params, "code").unwrap().starts_with("4/0"));
    assert_eq!(param(&params, "state").as_deref(), Some("state-123"));
    assert_eq!(
        param(&params, "scope").as_deref(),
        Some(
            "email openid https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/calendar.events.owned"
        )
    );
    assert!(param(&params, "authuser").is_some());
    assert_eq!(param(&params, "prompt").as_deref(), Some("consent"));
}

#[tokio::test]
async fn consent_redirect_goes_to_the_registered_uri() {
    let h = Harness::start().await;
    let (_, body) = h.consent(&h.auth_url(&[]), ALICE, "allow").await;
    let redirect = body["redirect"].as_str().unwrap();
    assert!(
        redirect.starts_with(&format!("{REDIRECT_URI}?")),
        "{redirect}"
    );
}

#[tokio::test]
async fn consent_deny_redirects_with_access_denied_and_no_code() {
    let h = Harness::start().await;
    let (status, body) = h.consent(&h.auth_url(&[]), ALICE, "deny").await;
    assert_eq!(status, StatusCode::OK);
    let params = redirect_params(&body);
    assert_eq!(param(&params, "error").as_deref(), Some("access_denied"));
    assert_eq!(param(&params, "state").as_deref(), Some("state-123"));
    assert!(param(&params, "code").is_none());
}

#[tokio::test]
async fn the_chosen_account_is_the_one_in_the_id_token() {
    let h = Harness::start().await;
    let tokens = h.connect(BOB).await;
    let claims = jwt_part(tokens.body["id_token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], "100000000000000000002");
    assert_eq!(claims["email"], BOB);
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["iss"], "https://accounts.google.com");
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    let header = jwt_part(tokens.body["id_token"].as_str().unwrap(), 0);
    assert_eq!(
        header,
        json!({"alg": "RS256", "kid": "emulator", "typ": "JWT"})
    );
}

#[tokio::test]
async fn an_added_account_can_consent() {
    let h = Harness::start().await;
    h.control_ok(
        "accounts",
        json!({"email": "carol@example.com", "sub": "100000000000000000003"}),
    )
    .await;
    let tokens = h.connect("carol@example.com").await;
    let claims = jwt_part(tokens.body["id_token"].as_str().unwrap(), 1);
    assert_eq!(claims["sub"], "100000000000000000003");
}

#[tokio::test]
async fn control_consent_without_account_uses_login_hint() {
    let h = Harness::start().await;
    let url = h.auth_url(&[("login_hint", BOB)]);
    let (status, body) = h
        .control_post(
            "consent",
            json!({"authorization_url": url, "decision": "allow"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let code = param(&redirect_params(&body), "code").unwrap();
    let (_, tokens) = h.exchange(&code, VERIFIER).await;
    assert_eq!(
        jwt_part(tokens["id_token"].as_str().unwrap(), 1)["email"],
        BOB
    );
    assert_eq!(
        h.control_post(
            "consent",
            json!({"authorization_url": h.auth_url(&[]), "decision": "allow"})
        )
        .await
        .0,
        StatusCode::BAD_REQUEST,
        "no account and no hint"
    );
}

#[tokio::test]
async fn unknown_account_is_refused() {
    let h = Harness::start().await;
    assert_eq!(
        h.consent(&h.auth_url(&[]), "nobody@example.com", "allow")
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn granular_consent_removes_unticked_scopes_but_keeps_identity_scopes() {
    let h = Harness::start().await;
    let (url, unticked) = (h.auth_url(&[]), [CALENDAR_SCOPE, "openid", "email"]);
    let consent = h.control.consent_answer(&url, ALICE, "allow", &unticked);
    let (status, body) = consent.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let params = redirect_params(&body);
    let scope = param(&params, "scope").unwrap();
    assert!(!scope.contains("calendar"), "{scope}");
    assert!(scope.split(' ').any(|s| s == "openid"));
    let code = param(&params, "code").unwrap();
    let (status, tokens) = h.exchange(&code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!tokens["scope"].as_str().unwrap().contains("calendar"));
}

#[tokio::test]
async fn include_granted_scopes_adds_earlier_grants() {
    let h = Harness::start().await;
    let calendar_full = "https://www.googleapis.com/auth/calendar";
    h.connect_with(
        &h.auth_url(&[("scope", &format!("openid {calendar_full}"))]),
        ALICE,
    )
    .await;
    let params = h
        .allow(&h.auth_url(&[("scope", "openid email")]), ALICE)
        .await;
    let scope = param(&params, "scope").unwrap();
    assert!(scope.split(' ').any(|s| s == calendar_full), "{scope}");
    let params = h
        .allow(
            &h.auth_url(&[("scope", "openid email"), ("include_granted_scopes", "")]),
            ALICE,
        )
        .await;
    let scope = param(&params, "scope").unwrap();
    assert!(!scope.split(' ').any(|s| s == calendar_full), "{scope}");
}

#[tokio::test]
async fn consent_page_lists_accounts_and_scopes_and_preselects_login_hint() {
    let h = Harness::start().await;
    let url = h.auth_url(&[("login_hint", BOB)]);
    let response = h.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(html.contains(&format!("value=\"{BOB}\" checked")), "{html}");
    assert!(html.contains(&format!("value=\"{ALICE}\">")));
    assert!(html.contains(&format!(
        "name=\"scope\" value=\"{CALENDAR_SCOPE}\" checked"
    )));
}

/// Reads an attribute value that follows `marker` in the page, undoing the HTML escaping.
fn attribute_after(html: &str, marker: &str) -> String {
    let start = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {html}"))
        + marker.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end]
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Acts like a browser on the default request's consent page: loads it and submits its form,
/// with `fields` as the user filled it in, to the URL its action resolves to.
async fn submit_consent_page(h: &Harness, fields: &[(&str, &str)]) -> reqwest::Response {
    let page_url = url::Url::parse(&h.auth_url(&[])).unwrap();
    let html = h
        .http
        .get(page_url.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let action = page_url.join(&attribute_after(&html, "action=\"")).unwrap();
    assert_eq!(action.path(), "/o/oauth2/v2/auth/decision");
    let request = attribute_after(&html, "name=\"request\" value=\"");
    let mut form = vec![("request", request.as_str())];
    form.extend_from_slice(fields);
    h.http.post(action).form(&form).send().await.unwrap()
}

/// The query parameters of an answer's `Location`.
fn location_params(response: &reqwest::Response) -> Vec<(String, String)> {
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    location.query_pairs().into_owned().collect()
}

#[tokio::test]
async fn consent_page_form_submission_redirects_with_a_code() {
    let h = Harness::start().await;
    let response = submit_consent_page(&h, &[("account", ALICE), ("decision", "allow")]).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(REDIRECT_URI), "{location}");
    let params = location_params(&response);
    assert_eq!(param(&params, "state").as_deref(), Some("state-123"));
    // The calendar checkbox was not submitted: the user unticked it.
    assert!(!param(&params, "scope").unwrap().contains("calendar"));
    assert_eq!(
        h.exchange(&param(&params, "code").unwrap(), VERIFIER)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn consent_page_deny_button_redirects_with_access_denied() {
    let h = Harness::start().await;
    let response = submit_consent_page(&h, &[("decision", "deny")]).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(&format!("{REDIRECT_URI}?error=access_denied")),
        "{location}"
    );
}

#[tokio::test]
async fn consent_page_with_the_calendar_box_ticked_grants_it() {
    let h = Harness::start().await;
    let fields = [
        ("account", BOB),
        ("scope", CALENDAR_SCOPE),
        ("decision", "allow"),
    ];
    let params = location_params(&submit_consent_page(&h, &fields).await);
    assert!(param(&params, "scope").unwrap().contains(CALENDAR_SCOPE));
}

/// An authorization request with `overrides` is refused on the consent page (Google's error
/// page: `status`, `text` on it, no redirect) and by the control consent (400 and `error`).
async fn assert_refused_request(
    overrides: &[(&str, &str)],
    status: StatusCode,
    text: &str,
    error: &str,
) {
    let h = Harness::start().await;
    let url = h.auth_url(overrides);
    let response = h.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), status);
    assert!(response.headers().get("location").is_none());
    let html = response.text().await.unwrap();
    assert!(html.contains(text), "{html}");
    let answer = h.consent(&url, ALICE, "allow").await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, error);
}

#[tokio::test]
async fn redirect_uri_mismatch_shows_an_error_and_does_not_redirect() {
    let overrides = [("redirect_uri", "https://evil.example/cb")];
    let page = "Error 400: redirect_uri_mismatch";
    assert_refused_request(
        &overrides,
        StatusCode::BAD_REQUEST,
        page,
        "redirect_uri_mismatch",
    )
    .await;
}

#[tokio::test]
async fn unknown_client_shows_invalid_client() {
    let overrides = [("client_id", "nope.apps.googleusercontent.com")];
    let page = "Error 401: invalid_client";
    assert_refused_request(&overrides, StatusCode::UNAUTHORIZED, page, "invalid_client").await;
}

#[tokio::test]
async fn malformed_authorization_requests_are_invalid_request() {
    let h = Harness::start().await;
    for overrides in [
        vec![("response_type", "")],
        vec![("scope", "")],
        vec![("code_challenge", "")],
        vec![("code_challenge", "short")],
    ] {
        let (status, body) = h.consent(&h.auth_url(&overrides), ALICE, "allow").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{overrides:?}");
        assert_eq!(body["error"], "invalid_request", "{overrides:?}");
    }
    let answer = h
        .consent(&h.auth_url(&[("scope", "openid bogus")]), ALICE, "allow")
        .await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_scope");
}

#[tokio::test]
async fn code_exchange_with_basic_auth_returns_google_shaped_tokens() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    assert!(tokens.access_token.starts_with("ya29."));
    assert!(tokens.refresh_token.as_deref().unwrap().starts_with("1//"));
    assert_eq!(tokens.body["token_type"], "Bearer");
    assert_eq!(tokens.body["expires_in"], 3599);
    assert!(
        tokens.body["scope"]
            .as_str()
            .unwrap()
            .contains(CALENDAR_SCOPE)
    );
}

#[tokio::test]
async fn code_exchange_with_form_client_credentials_works() {
    let h = Harness::start().await;
    let code = h.code(ALICE).await;
    let (status, body) = h
        .token_form(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("code_verifier", VERIFIER),
            ],
            false,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["access_token"].as_str().unwrap().starts_with("ya29."));
}

#[tokio::test]
async fn pkce_mismatch_is_invalid_grant() {
    let h = Harness::start().await;
    let code = h.code(ALICE).await;
    let other = "another-verifier-that-is-long-enough-to-be-valid-0123456789";
    let answer = h.exchange(&code, other).await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
    let answer = h.exchange(&code, "").await;
    assert_oauth_body(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Missing code verifier.",
    );
}

#[tokio::test]
async fn plain_pkce_is_accepted_like_google_does() {
    let h = Harness::start().await;
    let url = h.auth_url(&[
        ("code_challenge", VERIFIER),
        ("code_challenge_method", "plain"),
    ]);
    let code = param(&h.allow(&url, ALICE).await, "code").unwrap();
    assert_eq!(h.exchange(&code, VERIFIER).await.0, StatusCode::OK);
}

#[tokio::test]
async fn wrong_redirect_uri_at_exchange_is_refused() {
    let h = Harness::start().await;
    let code = h.code(ALICE).await;
    let answer = h
        .token_form(
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "https://app.example.test/other"),
                ("code_verifier", VERIFIER),
            ],
            true,
        )
        .await;
    assert_oauth_body(
        &answer,
        StatusCode::BAD_REQUEST,
        "redirect_uri_mismatch",
        "Bad Request",
    );
}

#[tokio::test]
async fn a_reused_code_is_invalid_grant_and_revokes_its_tokens() {
    let h = Harness::start().await;
    let code = h.code(ALICE).await;
    let (status, first) = h.exchange(&code, VERIFIER).await;
    assert_eq!(status, StatusCode::OK);
    let answer = h.exchange(&code, VERIFIER).await;
    assert_oauth_body(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Bad Request",
    );
    let answer = h.refresh(first["refresh_token"].as_str().unwrap()).await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
    h.assert_insert(
        first["access_token"].as_str().unwrap(),
        "reused01",
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn a_code_expires_after_ten_minutes_on_the_emulator_clock() {
    let h = Harness::start().await;
    let code = h.code(ALICE).await;
    h.advance_clock(601).await;
    let answer = h.exchange(&code, VERIFIER).await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn a_code_is_good_just_before_ten_minutes() {
    let h = Harness::start().await;
    let code = h.code(ALICE).await;
    h.advance_clock(590).await;
    assert_eq!(h.exchange(&code, VERIFIER).await.0, StatusCode::OK);
}

#[tokio::test]
async fn unknown_code_is_invalid_grant() {
    let h = Harness::start().await;
    let answer = h.exchange("4/0not-a-code", VERIFIER).await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
}

#[tokio::test]
async fn refresh_gives_a_new_access_token_and_no_new_refresh_token() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    let (status, body) = h.refresh(tokens.refresh_token.as_deref().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().unwrap();
    assert!(access.starts_with("ya29.") && access != tokens.access_token);
    assert!(body.get("refresh_token").is_none());
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["scope"].as_str().unwrap().contains(CALENDAR_SCOPE));
    h.assert_insert(access, "refreshed", StatusCode::OK).await;
}

#[tokio::test]
async fn refresh_after_user_revocation_is_invalid_grant_with_googles_body() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    h.control_ok("revoke", json!({"email": ALICE})).await;
    let answer = h.refresh(tokens.refresh_token.as_deref().unwrap()).await;
    assert_oauth_body(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Token has been expired or revoked.",
    );
    h.assert_insert(&tokens.access_token, "revoked01", StatusCode::UNAUTHORIZED)
        .await;
}

#[tokio::test]
async fn repeated_consent_without_prompt_consent_gives_no_refresh_token() {
    let h = Harness::start().await;
    let first = h.connect(ALICE).await;
    assert!(first.refresh_token.is_some());
    let again = h.connect_with(&h.auth_url(&[("prompt", "")]), ALICE).await;
    assert!(again.refresh_token.is_none(), "{}", again.body);
    let forced = h.connect(ALICE).await;
    assert!(forced.refresh_token.is_some());
    // A first consent of another account gets one even without prompt=consent.
    let bob = h.connect_with(&h.auth_url(&[("prompt", "")]), BOB).await;
    assert!(bob.refresh_token.is_some());
}

#[tokio::test]
async fn online_access_gives_no_refresh_token() {
    let h = Harness::start().await;
    let tokens = h
        .connect_with(&h.auth_url(&[("access_type", "")]), ALICE)
        .await;
    assert!(tokens.refresh_token.is_none());
}

#[tokio::test]
async fn after_revocation_a_new_consent_is_a_first_consent_again() {
    let h = Harness::start().await;
    h.connect(ALICE).await;
    h.control_ok("revoke", json!({"email": ALICE})).await;
    let tokens = h.connect_with(&h.auth_url(&[("prompt", "")]), ALICE).await;
    assert!(tokens.refresh_token.is_some());
}

#[tokio::test]
async fn wrong_secret_and_unknown_client_are_invalid_client() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    let refresh = tokens.refresh_token.unwrap();
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
    ];
    let answer = h
        .token_as(&form, ClientAuth::Basic(CLIENT_ID, "wrong"))
        .await;
    assert_oauth_body(
        &answer,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "Unauthorized",
    );
    let answer = h.token_as(&form, ClientAuth::Form("nope", "x")).await;
    assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
}

#[tokio::test]
async fn bad_token_requests_get_invalid_request_or_unsupported_grant_type() {
    let h = Harness::start().await;
    let answer = h.token_form(&[("code", "x")], true).await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
    let answer = h.token_form(&[("grant_type", "password")], true).await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "unsupported_grant_type");
    let form = [("grant_type", "refresh_token"), ("refresh_token", "1//x")];
    assert_eq!(
        h.token_as(&form, ClientAuth::None).await.0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn revoking_a_refresh_token_kills_its_access_tokens() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    let refresh = tokens.refresh_token.unwrap();
    assert_eq!(h.revoke(&refresh).await.0, StatusCode::OK);
    h.assert_insert(&tokens.access_token, "gone00001", StatusCode::UNAUTHORIZED)
        .await;
    let answer = h.refresh(&refresh).await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_grant");
    // Revoking it again: Google answers invalid_token.
    let answer = h.revoke(&refresh).await;
    assert_oauth_body(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_token",
        "Token expired or revoked",
    );
}

#[tokio::test]
async fn revoking_an_access_token_in_the_query_kills_the_grant() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    let mut url = h.url("revoke");
    url.query_pairs_mut()
        .append_pair("token", &tokens.access_token);
    let response = h.http.post(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        h.refresh(tokens.refresh_token.as_deref().unwrap()).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(h.stats().await["revoke"], 1);
}

#[tokio::test]
async fn revoking_an_unknown_token_is_invalid_token() {
    let h = Harness::start().await;
    let answer = h.revoke("ya29.unknown").await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_token");
}

#[tokio::test]
async fn token_lifetime_setting_changes_expires_in() {
    let h = Harness::start().await;
    h.control_ok("settings", json!({"access_token_lifetime_seconds": 120}))
        .await;
    let tokens = h.connect(ALICE).await;
    assert_eq!(tokens.body["expires_in"], 120);
    h.advance_clock(121).await;
    h.assert_insert(&tokens.access_token, "lifetime1", StatusCode::UNAUTHORIZED)
        .await;
}

#[tokio::test]
async fn time_limited_refresh_tokens_expire_on_the_emulator_clock() {
    let h = Harness::start().await;
    h.control_ok(
        "settings",
        json!({"refresh_token_lifetime_seconds": 604800}),
    )
    .await;
    let tokens = h.connect(ALICE).await;
    assert_eq!(tokens.body["refresh_token_expires_in"], 604800);
    let refresh = tokens.refresh_token.unwrap();
    h.advance_clock(604700).await;
    assert_eq!(h.refresh(&refresh).await.0, StatusCode::OK);
    h.advance_clock(101).await;
    let answer = h.refresh(&refresh).await;
    assert_oauth_body(
        &answer,
        StatusCode::BAD_REQUEST,
        "invalid_grant",
        "Token has been expired or revoked.",
    );
}

#[tokio::test]
async fn refresh_tokens_do_not_expire_by_default() {
    let h = Harness::start().await;
    let tokens = h.connect(ALICE).await;
    assert!(tokens.body.get("refresh_token_expires_in").is_none());
    h.advance_clock(400 * 86400).await;
    assert_eq!(
        h.refresh(tokens.refresh_token.as_deref().unwrap()).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn approval_prompt_with_prompt_is_a_conflict() {
    let h = Harness::start().await;
    let url = h.auth_url(&[("approval_prompt", "force")]);
    let answer = h.consent(&url, ALICE, "allow").await;
    assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");
}
