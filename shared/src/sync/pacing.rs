//! Google's quotas as a design input: every Google call of a container waits for a slot of two
//! rates, its user's and the container's, instead of collecting 403s and 429s after the fact.
//!
//! Google allows 600 Calendar requests a minute per user and 10,000 per project, both on a
//! sliding window, and also slows quick successive writes to one calendar. A rate here is a
//! token bucket (as GCRA: one instant per bucket), so in any 60 s it admits at most
//! `burst + per_minute` calls. The buckets live as long as the container, so consecutive
//! batches of one shard share them. A call whose slot would come after the invocation's
//! deadline (less the retry policy's safety margin) is not made: its record fails and comes
//! back in `batchItemFailures`, and the redelivery carries on where this invocation stopped.
//! README's "Capacity" section derives the defaults and the template's global bound from them.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Calls a minute, and how many of them may go at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    /// The most calls this rate admits in any 60 s window.
    pub const fn window_bound(self) -> u32 {
        self.per_minute + self.burst
    }

    fn interval(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }

    /// How far ahead of its theoretical time a call may go: what lets a burst through.
    fn tolerance(self) -> Duration {
        self.interval() * self.burst.saturating_sub(1)
    }

    /// When a call may go, given the bucket's theoretical arrival time.
    fn earliest(self, tat: Option<Instant>, now: Instant) -> Instant {
        tat.and_then(|t| t.checked_sub(self.tolerance()))
            .map_or(now, |t| t.max(now))
    }

    /// The theoretical arrival time after a call at `at`.
    fn after(self, tat: Option<Instant>, at: Instant) -> Instant {
        tat.map_or(at, |t| t.max(at)) + self.interval()
    }
}

/// The rates a container keeps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacingLimits {
    pub per_user: Rate,
    pub per_container: Rate,
}

/// A user's rate: 270 a minute and 20 at once, at most 290 in any minute, under half of
/// Google's 600, so one event-sync container and that user's resync together stay inside it.
const USER: Rate = Rate {
    per_minute: 270,
    burst: 20,
};

/// Google's Calendar API requests a minute per project, unless the project asked for more.
pub const GOOGLE_PROJECT_QUOTA: u32 = 10_000;

impl PacingLimits {
    /// An event-sync container: [`USER`] for each user, and 3,600 a minute in all (60 a second,
    /// what `SYNC_CONCURRENCY` 8 calls of 133 ms make) with 100 at once (two batches of 50): at
    /// most 3,700 in any minute, the unit of the template's global bound (README, "Capacity").
    pub const STREAM: Self = Self {
        per_user: USER,
        per_container: Rate {
            per_minute: 3_600,
            burst: 100,
        },
    };

    /// A resync container works for one user at a time, so it never needs more than one user's
    /// rate: at most 290 in any minute, however many users its jobs go through.
    pub const RESYNC: Self = Self {
        per_user: USER,
        per_container: USER,
    };
}

impl Default for PacingLimits {
    fn default() -> Self {
        Self::STREAM
    }
}

/// A Google call that found no slot before the deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "paced to stay inside Google's quota: the next slot for this user is {} ms away, past the invocation's deadline; Lambda delivers the record again",
    wait.as_millis()
)]
pub struct PacedOut {
    pub wait: Duration,
}

/// Users' buckets beyond which the idle ones (full again, the same as absent) are dropped.
const USERS_KEPT: usize = 4096;

#[derive(Default)]
struct Buckets {
    container: Option<Instant>,
    users: HashMap<String, Instant>,
}

/// The container's buckets: one per user it called Google for lately, and its own.
#[derive(Default)]
pub struct Pacer {
    limits: PacingLimits,
    buckets: Mutex<Buckets>,
}

impl std::fmt::Debug for Pacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pacer")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Pacer {
    pub fn new(limits: PacingLimits) -> Self {
        Self {
            limits,
            buckets: Mutex::default(),
        }
    }

    /// Takes the first slot at or after `now` that both `user_id`'s rate and the container's
    /// allow, unless it comes after `latest` (then nothing is taken).
    fn reserve(&self, user_id: &str, now: Instant, latest: Instant) -> Result<Instant, PacedOut> {
        let PacingLimits {
            per_user,
            per_container,
        } = self.limits;
        let mut buckets = self.buckets.lock().expect("no pacing code panics");
        let user = buckets.users.get(user_id).copied();
        let at = per_user
            .earliest(user, now)
            .max(per_container.earliest(buckets.container, now));
        if at > latest {
            return Err(PacedOut { wait: at - now });
        }
        buckets.container = Some(per_container.after(buckets.container, at));
        if buckets.users.len() >= USERS_KEPT && user.is_none() {
            buckets.users.retain(|_, tat| *tat > now);
        }
        buckets
            .users
            .insert(user_id.to_string(), per_user.after(user, at));
        Ok(at)
    }

    /// Waits for the next slot of `user_id`, or says there is none before `latest`.
    pub async fn admit(&self, user_id: &str, latest: Instant) -> Result<(), PacedOut> {
        let now = Instant::now();
        let at = self.reserve(user_id, now, latest)?;
        if at > now {
            tokio::time::sleep_until(at).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PacingLimits = PacingLimits {
        per_user: Rate {
            per_minute: 600,
            burst: 5,
        },
        per_container: Rate {
            per_minute: 1_200,
            burst: 8,
        },
    };

    /// The slots `calls` calls of `user` get, all asked at `now`, with no deadline.
    fn slots(pacer: &Pacer, user: &str, calls: usize, now: Instant) -> Vec<Duration> {
        let far = now + Duration::from_secs(3600);
        (0..calls)
            .map(|_| pacer.reserve(user, now, far).unwrap() - now)
            .collect()
    }

    #[test]
    fn a_burst_goes_at_once_then_the_rate_spaces_the_rest() {
        let pacer = Pacer::new(LIMITS);
        let now = Instant::now();
        let got = slots(&pacer, "u", 8, now);
        assert_eq!(got[..5], [Duration::ZERO; 5]);
        // 600 a minute: 100 ms apart once the burst is spent.
        assert_eq!(
            got[5..],
            [100, 200, 300].map(Duration::from_millis),
            "{got:?}"
        );
    }

    #[test]
    fn no_sixty_second_window_gets_more_than_burst_plus_rate() {
        let limits = PacingLimits::STREAM;
        let pacer = Pacer::new(limits);
        let now = Instant::now();
        // One user's burst of 1,000 changes.
        let got = slots(&pacer, "u", 1000, now);
        let window = Duration::from_secs(60);
        let most = (0..got.len())
            .map(|i| {
                got[i..]
                    .iter()
                    .take_while(|t| **t < got[i] + window)
                    .count()
            })
            .max()
            .unwrap();
        assert!(
            most as u32 <= limits.per_user.window_bound(),
            "{most} calls in one minute"
        );
        assert!(limits.per_user.window_bound() <= 600 / 2);
        // What the README says a 1,000-change burst costs in wall time.
        let last = got.last().unwrap().as_secs();
        assert!((210..=220).contains(&last), "{last} s");
    }

    #[test]
    fn users_have_their_own_rate_inside_the_containers() {
        let pacer = Pacer::new(LIMITS);
        let now = Instant::now();
        assert_eq!(slots(&pacer, "a", 5, now), [Duration::ZERO; 5]);
        // Another user's burst is free too, up to the container's 8 at once...
        assert_eq!(slots(&pacer, "b", 3, now), [Duration::ZERO; 3]);
        // ...then the container's 1,200 a minute (50 ms apart) holds everyone back.
        assert_eq!(slots(&pacer, "b", 1, now), [Duration::from_millis(50)]);
    }

    #[test]
    fn a_slot_past_the_deadline_is_refused_and_not_taken() {
        let pacer = Pacer::new(LIMITS);
        let now = Instant::now();
        slots(&pacer, "u", 5, now);
        let latest = now + Duration::from_millis(50);
        let refused = pacer.reserve("u", now, latest).unwrap_err();
        assert_eq!(refused.wait, Duration::from_millis(100));
        assert!(
            refused
                .to_string()
                .contains("Lambda delivers the record again")
        );
        // Nothing was taken: the next call with time enough gets that same slot.
        let far = now + Duration::from_secs(1);
        assert_eq!(
            pacer.reserve("u", now, far).unwrap() - now,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn idle_users_are_forgotten_once_many() {
        let pacer = Pacer::new(LIMITS);
        let now = Instant::now();
        slots(&pacer, "busy", 1, now);
        for i in 1..USERS_KEPT {
            slots(&pacer, &format!("u{i}"), 1, now);
        }
        // Hours later every bucket is full again: a new user's call drops them all.
        let later = now + Duration::from_secs(3 * 3600);
        pacer
            .reserve("new", later, later + Duration::from_secs(1))
            .unwrap();
        assert_eq!(pacer.buckets.lock().unwrap().users.len(), 1);
    }

    #[test]
    fn the_templates_defaults_stay_inside_googles_project_quota() {
        let template = testkit::template::Template::load_workspace().unwrap();
        let root = template.as_json();
        let invocations = root["Parameters"]["EventSyncReservedConcurrency"]["Default"]
            .as_u64()
            .unwrap() as u32;
        let jobs = root["Resources"]["ResyncFunction"]["Properties"]["Events"]["Jobs"]["Properties"]
            ["ScalingConfig"]["MaximumConcurrency"]
            .as_u64()
            .unwrap() as u32;
        let stream = invocations * PacingLimits::STREAM.per_container.window_bound();
        let resync = jobs * PacingLimits::RESYNC.per_container.window_bound();
        assert!(
            stream + resync <= GOOGLE_PROJECT_QUOTA,
            "{stream} + {resync} calls in a minute"
        );
        let readme =
            std::fs::read_to_string(testkit::paths::workspace_root().join("README.md")).unwrap();
        let text = |n: u32| match n {
            0..1000 => n.to_string(),
            _ => format!("{},{:03}", n / 1000, n % 1000),
        };
        let said = format!(
            "{invocations} × {} + {jobs} × {} = {}",
            text(PacingLimits::STREAM.per_container.window_bound()),
            text(PacingLimits::RESYNC.per_container.window_bound()),
            text(stream + resync)
        );
        assert!(readme.contains(&said), "the README should say {said}");
    }
}
