//! Configuration: every environment variable of SPEC's table, read once at cold start.
//!
//! A missing or malformed variable is a [`ConfigError`] naming it; the functions' `main` prints that
//! one line and exits non-zero ([`load_or_exit`]) instead of panicking halfway through a request.

use std::fmt;

use url::Url;

/// Google's production endpoints, the defaults of SPEC's configuration table.
pub const DEFAULT_GOOGLE_AUTH_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
pub const DEFAULT_GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
pub const DEFAULT_GOOGLE_REVOKE_URL: &str = "https://oauth2.googleapis.com/revoke";
pub const DEFAULT_GOOGLE_CALENDAR_API_URL: &str = "https://www.googleapis.com/calendar/v3";
/// The scopes of `CALENDAR_MODE=primary`: events on the calendars the user owns.
pub const DEFAULT_GOOGLE_SCOPES: &str =
    "openid email https://www.googleapis.com/auth/calendar.events.owned";
/// The scopes of `CALENDAR_MODE=dedicated`: the calendars calsync makes, nothing else.
pub const DEDICATED_GOOGLE_SCOPES: &str =
    "openid email https://www.googleapis.com/auth/calendar.app.created";
/// The scope that lets calsync make a calendar of its own and write only there.
pub const APP_CREATED_SCOPE: &str = "https://www.googleapis.com/auth/calendar.app.created";
/// The title of the dedicated calendar unless `CALENDAR_NAME` says otherwise.
pub const DEFAULT_CALENDAR_NAME: &str = "calsync";
pub const DEFAULT_SYNC_CONCURRENCY: usize = 8;
/// Days a grant may go without a refresh before the keep-alive refreshes it (`KEEPALIVE_DAYS`).
pub const DEFAULT_KEEPALIVE_DAYS: usize = 30;
/// Google ends a refresh token unused for six months: a keep-alive period must stay below it.
pub const GOOGLE_IDLE_LIMIT_DAYS: usize = 180;
/// The account's default EventBridge bus, where lifecycle events go unless told otherwise.
pub const DEFAULT_EVENT_BUS_NAME: &str = "default";

/// The variables without a default: a function stops at start when one is missing.
pub const REQUIRED_VARIABLES: [&str; 10] = [
    "GRANTS_TABLE",
    "OAUTH_FLOWS_TABLE",
    "SYNC_STATE_TABLE",
    "EVENTS_TABLE",
    "RESYNC_QUEUE_URL",
    "GOOGLE_CLIENT_SECRET_ID",
    "TOKEN_KEYS_SECRET_ID",
    "OAUTH_REDIRECT_URI",
    "ALLOWED_RETURN_ORIGINS",
    "DEFAULT_RETURN_URL",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration error: {name} is not set; {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("configuration error: {name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
}

/// Where variables come from: the process environment in Lambda, a map in tests.
pub trait Source {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Source for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<const N: usize> Source for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

impl Source for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// Typed readers over a [`Source`]; an empty value counts as unset.
pub struct Reader<'a, S: Source + ?Sized>(pub &'a S);

impl<S: Source + ?Sized> Reader<'_, S> {
    fn raw(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &'static str, hint: &'static str) -> Result<String, ConfigError> {
        self.raw(name).ok_or(ConfigError::Missing { name, hint })
    }

    pub fn optional(&self, name: &'static str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_string())
    }

    pub fn url(&self, name: &'static str, value: String) -> Result<Url, ConfigError> {
        let url = Url::parse(&value).map_err(|e| ConfigError::Malformed {
            name,
            reason: format!("not an absolute URL ({e})"),
        })?;
        if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
            return Err(ConfigError::Malformed {
                name,
                reason: "must be an http(s) URL with a host".into(),
            });
        }
        Ok(url)
    }

    pub fn required_url(&self, name: &'static str, hint: &'static str) -> Result<Url, ConfigError> {
        let value = self.required(name, hint)?;
        self.url(name, value)
    }

    pub fn optional_url(&self, name: &'static str, default: &str) -> Result<Url, ConfigError> {
        let value = self.optional(name, default);
        self.url(name, value)
    }

    pub fn positive(&self, name: &'static str, default: usize) -> Result<usize, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ConfigError::Malformed {
                    name,
                    reason: format!("expected a whole number above 0, got {v:?}"),
                }),
            },
        }
    }

    /// A comma-separated list of origins (`scheme://host[:port]`), each normalised by [`Url`].
    pub fn origins(
        &self,
        name: &'static str,
        hint: &'static str,
    ) -> Result<Vec<String>, ConfigError> {
        let value = self.required(name, hint)?;
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let url = self.url(name, item.to_string())?;
                if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
                    return Err(ConfigError::Malformed {
                        name,
                        reason: format!(
                            "{item:?} is not a bare origin like https://app.example.com"
                        ),
                    });
                }
                Ok(url.origin().ascii_serialization())
            })
            .collect()
    }

    /// An EventBridge bus name: 1 to 256 of `A-Z a-z 0-9 . - _ /` (EventBridge's own rule, and
    /// the template parameter's `AllowedPattern`).
    pub fn bus_name(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.optional(name, default);
        let valid = value.len() <= 256
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
        if !valid {
            return Err(ConfigError::Malformed {
                name,
                reason: format!(
                    "{value:?} is not an EventBridge bus name (A-Z a-z 0-9 . - _ /, at most 256)"
                ),
            });
        }
        Ok(value)
    }

    pub fn words(&self, name: &'static str, default: &str) -> Vec<String> {
        self.optional(name, default)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

/// DynamoDB table names.
#[derive(Debug, Clone)]
pub struct Tables {
    pub grants: String,
    pub oauth_flows: String,
    pub sync_state: String,
    pub events: String,
}

impl Tables {
    fn read<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<Self, ConfigError> {
        const HINT: &str = "the template sets it to the table's name";
        Ok(Self {
            grants: r.required("GRANTS_TABLE", HINT)?,
            oauth_flows: r.required("OAUTH_FLOWS_TABLE", HINT)?,
            sync_state: r.required("SYNC_STATE_TABLE", HINT)?,
            events: r.required("EVENTS_TABLE", HINT)?,
        })
    }
}

/// Secrets Manager ids (names or ARNs).
#[derive(Debug, Clone)]
pub struct SecretIds {
    pub google_client: String,
    pub token_keys: String,
}

impl SecretIds {
    fn read<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<Self, ConfigError> {
        Ok(Self {
            google_client: r.required(
                "GOOGLE_CLIENT_SECRET_ID",
                "set it to the Secrets Manager id of the Google OAuth client JSON",
            )?,
            token_keys: r.required(
                "TOKEN_KEYS_SECRET_ID",
                "set it to the Secrets Manager id of the token keyring",
            )?,
        })
    }
}

/// Google's endpoints; tests and the local stack point them at the emulator.
#[derive(Debug, Clone)]
pub struct GoogleEndpoints {
    pub auth_url: Url,
    pub token_url: Url,
    pub revoke_url: Url,
    pub calendar_api_url: Url,
}

impl GoogleEndpoints {
    fn read<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<Self, ConfigError> {
        Ok(Self {
            auth_url: r.optional_url("GOOGLE_AUTH_URL", DEFAULT_GOOGLE_AUTH_URL)?,
            token_url: r.optional_url("GOOGLE_TOKEN_URL", DEFAULT_GOOGLE_TOKEN_URL)?,
            revoke_url: r.optional_url("GOOGLE_REVOKE_URL", DEFAULT_GOOGLE_REVOKE_URL)?,
            calendar_api_url: r
                .optional_url("GOOGLE_CALENDAR_API_URL", DEFAULT_GOOGLE_CALENDAR_API_URL)?,
        })
    }
}

/// Which calendar calsync writes the rows to (`CALENDAR_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarMode {
    /// The user's primary calendar (or the row's `calendar_id`), with `calendar.events.owned`.
    Primary,
    /// A secondary calendar calsync makes for the user on the first connect, with
    /// `calendar.app.created`: calsync can touch nothing else of the user's.
    Dedicated,
}

/// Where rows go in Google (`CALENDAR_MODE`, `CALENDAR_NAME`, `DELETE_CALENDAR_ON_DISCONNECT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarSettings {
    pub mode: CalendarMode,
    /// The dedicated calendar's title, as the user sees it in Google Calendar.
    pub name: String,
    /// A disconnect also deletes the dedicated calendar (it is the user's to keep otherwise).
    pub delete_on_disconnect: bool,
}

impl CalendarSettings {
    fn read<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<Self, ConfigError> {
        let mode = match r.optional("CALENDAR_MODE", "primary").as_str() {
            "primary" => CalendarMode::Primary,
            "dedicated" => CalendarMode::Dedicated,
            other => {
                return Err(ConfigError::Malformed {
                    name: "CALENDAR_MODE",
                    reason: format!("expected primary or dedicated, got {other:?}"),
                });
            }
        };
        let name = r.optional("CALENDAR_NAME", DEFAULT_CALENDAR_NAME);
        // Google's limit on a calendar's title is not documented; keep it to what a list shows.
        if name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(ConfigError::Malformed {
                name: "CALENDAR_NAME",
                reason: "at most 100 characters, no control characters".into(),
            });
        }
        let delete_on_disconnect = match r
            .optional("DELETE_CALENDAR_ON_DISCONNECT", "false")
            .as_str()
        {
            "false" => false,
            "true" => true,
            other => {
                return Err(ConfigError::Malformed {
                    name: "DELETE_CALENDAR_ON_DISCONNECT",
                    reason: format!("expected true or false, got {other:?}"),
                });
            }
        };
        Ok(Self {
            mode,
            name,
            delete_on_disconnect,
        })
    }

    /// The calendar calsync makes for each user, if this deployment has one.
    pub fn dedicated(&self) -> Option<&str> {
        (self.mode == CalendarMode::Dedicated).then_some(self.name.as_str())
    }

    /// The scopes asked for when `GOOGLE_SCOPES` is unset.
    fn default_scopes(&self) -> &'static str {
        match self.mode {
            CalendarMode::Primary => DEFAULT_GOOGLE_SCOPES,
            CalendarMode::Dedicated => DEDICATED_GOOGLE_SCOPES,
        }
    }
}

/// The OAuth settings the start and callback routes share.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    pub redirect_uri: Url,
    pub allowed_return_origins: Vec<String>,
    pub default_return_url: Url,
    pub scopes: Vec<String>,
}

impl OAuthSettings {
    fn read<S: Source + ?Sized>(
        r: &Reader<'_, S>,
        calendar: &CalendarSettings,
    ) -> Result<Self, ConfigError> {
        let scopes = r.words("GOOGLE_SCOPES", calendar.default_scopes());
        if calendar.mode == CalendarMode::Dedicated
            && !scopes.iter().any(|s| s == APP_CREATED_SCOPE)
        {
            return Err(ConfigError::Malformed {
                name: "GOOGLE_SCOPES",
                reason: format!(
                    "CALENDAR_MODE=dedicated needs {APP_CREATED_SCOPE}; leave GOOGLE_SCOPES empty to get the mode's scopes"
                ),
            });
        }
        Ok(Self {
            redirect_uri: r.required_url(
                "OAUTH_REDIRECT_URI",
                "set it to the callback URL registered with Google, exactly",
            )?,
            allowed_return_origins: r.origins(
                "ALLOWED_RETURN_ORIGINS",
                "set it to the app origins return_to may point at, comma-separated",
            )?,
            default_return_url: r.required_url(
                "DEFAULT_RETURN_URL",
                "set it to the app page to return to when no return_to is given",
            )?,
            scopes,
        })
    }
}

/// Everything a calsync function reads from its environment. Every function reads the whole set,
/// so one template block of variables serves all three and a missing one shows at the first start.
#[derive(Debug, Clone)]
pub struct Config {
    pub tables: Tables,
    pub secrets: SecretIds,
    pub google: GoogleEndpoints,
    pub oauth: OAuthSettings,
    pub calendar: CalendarSettings,
    pub sync_concurrency: usize,
    /// The SQS queue of resync jobs ([`crate::resync`]).
    pub resync_queue_url: String,
    /// The EventBridge bus of the lifecycle events (`EVENT_BUS_NAME`).
    pub event_bus_name: String,
    /// The keep-alive refreshes grants idle this many days (`KEEPALIVE_DAYS`).
    pub keepalive_days: usize,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_source(&ProcessEnv)
    }

    pub fn from_source<S: Source + ?Sized>(source: &S) -> Result<Self, ConfigError> {
        let r = Reader(source);
        let calendar = CalendarSettings::read(&r)?;
        Ok(Self {
            tables: Tables::read(&r)?,
            secrets: SecretIds::read(&r)?,
            google: GoogleEndpoints::read(&r)?,
            oauth: OAuthSettings::read(&r, &calendar)?,
            calendar,
            sync_concurrency: r.positive("SYNC_CONCURRENCY", DEFAULT_SYNC_CONCURRENCY)?,
            resync_queue_url: r.required(
                "RESYNC_QUEUE_URL",
                "the template sets it to the resync queue's URL",
            )?,
            event_bus_name: r.bus_name("EVENT_BUS_NAME", DEFAULT_EVENT_BUS_NAME)?,
            keepalive_days: keepalive_days(&r)?,
        })
    }
}

fn keepalive_days<S: Source + ?Sized>(r: &Reader<'_, S>) -> Result<usize, ConfigError> {
    const NAME: &str = "KEEPALIVE_DAYS";
    let days = r.positive(NAME, DEFAULT_KEEPALIVE_DAYS)?;
    if days >= GOOGLE_IDLE_LIMIT_DAYS {
        return Err(ConfigError::Malformed {
            name: NAME,
            reason: format!(
                "{days} days: Google ends refresh tokens unused for six months, so keep it below {GOOGLE_IDLE_LIMIT_DAYS}"
            ),
        });
    }
    Ok(days)
}

/// Reads the configuration or prints one line naming the bad variable and exits with status 78
/// (`EX_CONFIG`), which Lambda reports as `Runtime.ExitError` at init.
pub fn load_or_exit(function: &str) -> Config {
    match Config::from_env() {
        Ok(config) => config,
        Err(error) => exit_with(function, &error),
    }
}

fn exit_with(function: &str, error: &dyn fmt::Display) -> ! {
    eprintln!("{function}: {error}");
    std::process::exit(78)
}

/// The variables of a complete configuration, for unit tests; `overrides` replace or add some.
#[cfg(test)]
pub(crate) fn test_variables(
    overrides: &[(&str, &str)],
) -> std::collections::HashMap<String, String> {
    let base = [
        ("GRANTS_TABLE", "grants"),
        ("OAUTH_FLOWS_TABLE", "flows"),
        ("SYNC_STATE_TABLE", "sync"),
        ("EVENTS_TABLE", "events"),
        (
            "RESYNC_QUEUE_URL",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/resync",
        ),
        ("GOOGLE_CLIENT_SECRET_ID", "client"),
        ("TOKEN_KEYS_SECRET_ID", "keys"),
        (
            "OAUTH_REDIRECT_URI",
            "https://api.example.com/oauth/google/callback",
        ),
        (
            "ALLOWED_RETURN_ORIGINS",
            "https://app.example.com, http://localhost:3000",
        ),
        ("DEFAULT_RETURN_URL", "https://app.example.com/settings"),
    ];
    base.iter()
        .chain(overrides)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> std::collections::HashMap<String, String> {
        test_variables(&[])
    }

    #[test]
    fn defaults_apply_when_optional_variables_are_unset() {
        let config = Config::from_source(&full()).unwrap();
        assert_eq!(config.google.token_url.as_str(), DEFAULT_GOOGLE_TOKEN_URL);
        assert_eq!(config.oauth.scopes.len(), 3);
        assert_eq!(config.sync_concurrency, 8);
        assert_eq!(config.event_bus_name, "default");
        assert_eq!(
            config.oauth.allowed_return_origins,
            vec!["https://app.example.com", "http://localhost:3000"]
        );
    }

    #[test]
    fn every_required_variable_is_named_when_missing() {
        let env = full();
        let mut names: Vec<&str> = env.keys().map(String::as_str).collect();
        names.sort();
        let mut required = REQUIRED_VARIABLES.to_vec();
        required.sort();
        assert_eq!(
            names, required,
            "full() sets exactly the required variables"
        );
        for name in full().keys() {
            let mut env = full();
            env.remove(name);
            let error = Config::from_source(&env).unwrap_err();
            assert!(
                matches!(&error, ConfigError::Missing { name: n, .. } if n == name),
                "{error}"
            );
            assert!(error.to_string().contains(name.as_str()));
        }
    }

    #[test]
    fn a_bus_of_its_own_is_read() {
        let env = test_variables(&[("EVENT_BUS_NAME", "calsync-events/prod_1.a")]);
        let config = Config::from_source(&env).unwrap();
        assert_eq!(config.event_bus_name, "calsync-events/prod_1.a");
    }

    #[test]
    fn keepalive_days_default_to_30_and_may_be_set() {
        assert_eq!(Config::from_source(&full()).unwrap().keepalive_days, 30);
        let env = test_variables(&[("KEEPALIVE_DAYS", "179")]);
        assert_eq!(Config::from_source(&env).unwrap().keepalive_days, 179);
    }

    #[test]
    fn the_calendar_mode_chooses_the_scopes() {
        let primary = Config::from_source(&full()).unwrap();
        assert_eq!(primary.calendar.mode, CalendarMode::Primary);
        assert_eq!(primary.calendar.dedicated(), None);
        assert_eq!(primary.oauth.scopes.join(" "), DEFAULT_GOOGLE_SCOPES);
        let env = test_variables(&[("CALENDAR_MODE", "dedicated"), ("CALENDAR_NAME", "Acme")]);
        let dedicated = Config::from_source(&env).unwrap();
        assert_eq!(dedicated.calendar.dedicated(), Some("Acme"));
        assert!(!dedicated.calendar.delete_on_disconnect);
        assert_eq!(dedicated.oauth.scopes.join(" "), DEDICATED_GOOGLE_SCOPES);
        // Scopes that cannot reach the calendar of a dedicated deployment are refused at start.
        let env = test_variables(&[
            ("CALENDAR_MODE", "dedicated"),
            ("GOOGLE_SCOPES", DEFAULT_GOOGLE_SCOPES),
        ]);
        assert!(matches!(
            Config::from_source(&env),
            Err(ConfigError::Malformed {
                name: "GOOGLE_SCOPES",
                ..
            })
        ));
    }

    #[test]
    fn blank_counts_as_missing() {
        let mut env = full();
        env.insert("GRANTS_TABLE".into(), "  ".into());
        assert!(matches!(
            Config::from_source(&env),
            Err(ConfigError::Missing {
                name: "GRANTS_TABLE",
                ..
            })
        ));
    }

    #[test]
    fn malformed_values_are_named() {
        let cases = [
            ("SYNC_CONCURRENCY", "0"),
            ("SYNC_CONCURRENCY", "many"),
            ("GOOGLE_TOKEN_URL", "not a url"),
            ("OAUTH_REDIRECT_URI", "ftp://x.example/cb"),
            ("ALLOWED_RETURN_ORIGINS", "https://app.example.com/path"),
            ("EVENT_BUS_NAME", "arn:aws:events:eu-west-1:1:event-bus/x"),
            ("EVENT_BUS_NAME", "my bus"),
            ("KEEPALIVE_DAYS", "0"),
            ("KEEPALIVE_DAYS", "180"),
            ("KEEPALIVE_DAYS", "a month"),
            ("CALENDAR_MODE", "secondary"),
            ("DELETE_CALENDAR_ON_DISCONNECT", "yes"),
            ("CALENDAR_NAME", "two\nlines"),
        ];
        for (name, value) in cases {
            let mut env = full();
            env.insert(name.into(), value.into());
            let error = Config::from_source(&env).unwrap_err();
            assert!(
                matches!(&error, ConfigError::Malformed { name: n, .. } if *n == name),
                "{name}={value}: {error}"
            );
        }
    }
}
