//! `return_to`: where the browser goes after the connect, limited to the app's own origins.
//!
//! The value must be an absolute http(s) URL without user info whose origin (scheme, host and
//! port after `url`'s normalisation: lowercase host, IDNA, default ports dropped) is exactly one
//! of `ALLOWED_RETURN_ORIGINS`. Before parsing, anything a browser might read differently from
//! `url` is refused outright: backslashes, control characters and whitespace, and percent-encoded
//! slashes, backslashes or `@` (`%2f`, `%5c`, `%40`) anywhere before the path, which some
//! browsers and proxies decode. Scheme-relative `//host` and relative forms are not absolute URLs
//! and fail the parse.

use url::Url;

/// Why a `return_to` was refused (for logs; the caller only sees `invalid_return_to`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReturnToError {
    #[error("contains a backslash, whitespace or a control character")]
    Characters,
    #[error("contains an encoded slash, backslash or @ in its authority")]
    EncodedSeparator,
    #[error("is not an absolute URL")]
    NotAbsolute,
    #[error("is not http or https")]
    Scheme,
    #[error("carries user info")]
    UserInfo,
    #[error("its origin is not an allowed return origin")]
    Origin,
    #[error("is longer than 2048 characters")]
    TooLong,
}

/// Checks `raw` against the allowed origins (already normalised by the configuration reader).
pub fn validate(raw: &str, allowed_origins: &[String]) -> Result<Url, ReturnToError> {
    if raw.len() > 2048 {
        return Err(ReturnToError::TooLong);
    }
    if raw
        .chars()
        .any(|c| c == '\\' || c.is_control() || c.is_whitespace())
    {
        return Err(ReturnToError::Characters);
    }
    // The authority ends at the first '/', '?' or '#' after "scheme://".
    let after_scheme = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = after_scheme[..authority_end].to_ascii_lowercase();
    if ["%2f", "%5c", "%40", "%3a", "%23", "%3f"]
        .iter()
        .any(|e| authority.contains(e))
    {
        return Err(ReturnToError::EncodedSeparator);
    }
    let url = Url::parse(raw).map_err(|_| ReturnToError::NotAbsolute)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ReturnToError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ReturnToError::UserInfo);
    }
    if url.host().is_none() || url.cannot_be_a_base() {
        return Err(ReturnToError::NotAbsolute);
    }
    let origin = url.origin().ascii_serialization();
    if !allowed_origins.contains(&origin) {
        return Err(ReturnToError::Origin);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec![
            "https://app.example".to_string(),
            "http://localhost:3000".to_string(),
        ]
    }

    #[test]
    fn table_of_cases() {
        use ReturnToError::*;
        let cases: &[(&str, Result<&str, ReturnToError>)] = &[
            (
                "https://app.example/settings",
                Ok("https://app.example/settings"),
            ),
            ("https://app.example", Ok("https://app.example/")),
            (
                "https://APP.Example/x?y=1#z",
                Ok("https://app.example/x?y=1#z"),
            ),
            ("https://app.example:443/x", Ok("https://app.example/x")),
            ("https://app.example./x", Err(Origin)),
            ("http://localhost:3000/cb", Ok("http://localhost:3000/cb")),
            ("http://localhost:3001/cb", Err(Origin)),
            ("http://localhost/cb", Err(Origin)),
            ("http://app.example/settings", Err(Origin)),
            ("https://app.example:8443/x", Err(Origin)),
            ("//evil.example", Err(NotAbsolute)),
            ("//app.example/settings", Err(NotAbsolute)),
            ("/settings", Err(NotAbsolute)),
            ("settings", Err(NotAbsolute)),
            ("", Err(NotAbsolute)),
            ("https://app.example@evil.example/", Err(UserInfo)),
            ("https://user:pw@app.example/", Err(UserInfo)),
            ("https://evil.example@app.example/", Err(UserInfo)),
            ("https://app.example.evil.example/", Err(Origin)),
            ("https://evil.example/app.example", Err(Origin)),
            ("https://evilapp.example/", Err(Origin)),
            ("javascript:alert(1)", Err(Scheme)),
            ("JavaScript://app.example/%0aalert(1)", Err(Scheme)),
            ("data:text/html,hi", Err(Scheme)),
            ("ftp://app.example/", Err(Scheme)),
            ("https:\\\\evil.example", Err(Characters)),
            ("https://app.example\\@evil.example/", Err(Characters)),
            ("/\\evil.example", Err(Characters)),
            ("https://app.example/\tx", Err(Characters)),
            ("https://app.example/ x", Err(Characters)),
            ("https://app.example\n.evil.example/", Err(Characters)),
            (
                "https://evil.example%2f@app.example/",
                Err(EncodedSeparator),
            ),
            (
                "https://evil.example%2F.app.example/",
                Err(EncodedSeparator),
            ),
            ("https://app.example%40evil.example/", Err(EncodedSeparator)),
            ("https://app.example%5cevil.example/", Err(EncodedSeparator)),
            ("https:%2f%2fevil.example", Err(EncodedSeparator)),
            (
                "https://app.example/%2f%2fevil.example",
                Ok("https://app.example/%2f%2fevil.example"),
            ),
            ("https://[::1]/", Err(Origin)),
        ];
        for (input, expected) in cases {
            let got = validate(input, &allowed()).map(|u| u.to_string());
            let expected = expected.clone().map(str::to_string);
            assert_eq!(got, expected, "return_to {input:?}");
        }
    }

    #[test]
    fn overlong_values_are_refused() {
        let long = format!("https://app.example/{}", "a".repeat(2100));
        assert_eq!(validate(&long, &allowed()), Err(ReturnToError::TooLong));
    }
}
