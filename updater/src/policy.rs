//! When the node may reboot into an installed update (`[update] policy` and
//! `reboot_window`). A pure function of the config and the time, so sysd asks it on a
//! timer and tests pin it down.

use berth_config::{RebootWindow, Update, UpdatePolicy};

/// What the policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "when", content = "at")]
pub enum RebootDecision {
    /// Only an operator reboots (`policy = "manual"` or `"download"`).
    Manual,
    /// Reboot now (`policy = "auto"` with no window, or inside the window).
    Now,
    /// Wait until this time (Unix seconds, UTC): the next window opens then.
    At(u64),
}

const DAY: u64 = 86_400;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Day of the week of a Unix day number, Monday = 0 (1970-01-01 was a Thursday).
pub fn weekday(unix_day: u64) -> usize {
    ((unix_day + 3) % 7) as usize
}

fn parse_hhmm(s: &str) -> Option<u64> {
    let (h, m) = s.trim().split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 3600 + m * 60)
}

/// Next moment (>= `now`) inside `w`, or `None` when the window is unusable.
fn next_in_window(w: &RebootWindow, now: u64) -> Option<u64> {
    let start = parse_hhmm(&w.start)?;
    let len = w.duration.get().as_secs();
    if len == 0 {
        return None;
    }
    let allowed = |day: u64| {
        w.days.is_empty()
            || w.days
                .iter()
                .any(|d| DAYS.get(weekday(day)) == Some(&d.as_str()))
    };
    let today = now / DAY;
    // Windows that opened up to a week ago may still be open (long durations).
    let first = today.saturating_sub(7 + len / DAY);
    (first..=today + 8)
        .filter(|d| allowed(*d))
        .map(|d| d * DAY + start)
        .filter(|open| open + len > now)
        .map(|open| open.max(now))
        .min()
}

/// When the node may reboot into an installed update, given `[update]` and the time now
/// (Unix seconds, UTC).
pub fn reboot_decision(u: &Update, now: u64) -> RebootDecision {
    match u.policy {
        UpdatePolicy::Manual | UpdatePolicy::Download => RebootDecision::Manual,
        UpdatePolicy::Auto => match &u.reboot_window {
            None => RebootDecision::Now,
            Some(w) => match next_in_window(w, now) {
                Some(t) if t <= now => RebootDecision::Now,
                Some(t) => RebootDecision::At(t),
                None => RebootDecision::Manual,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_config::Duration;

    fn auto(days: &[&str], start: &str, hours: u64) -> Update {
        Update {
            policy: UpdatePolicy::Auto,
            reboot_window: Some(RebootWindow {
                days: days.iter().map(|s| s.to_string()).collect(),
                start: start.into(),
                duration: Duration::secs(hours * 3600),
            }),
            ..Update::default()
        }
    }

    // 2024-01-01 00:00 UTC, a Monday.
    const MON: u64 = 1_704_067_200;

    #[test]
    fn weekdays() {
        assert_eq!(weekday(0), 3); // Thursday
        assert_eq!(weekday(MON / DAY), 0);
    }

    #[test]
    fn policies() {
        let mut u = Update::default();
        assert_eq!(reboot_decision(&u, MON), RebootDecision::Manual);
        u.policy = UpdatePolicy::Download;
        assert_eq!(reboot_decision(&u, MON), RebootDecision::Manual);
        u.policy = UpdatePolicy::Auto;
        assert_eq!(reboot_decision(&u, MON), RebootDecision::Now);
    }

    #[test]
    fn windows() {
        // Every day 02:00 for 2 h.
        let u = auto(&[], "02:00", 2);
        assert_eq!(reboot_decision(&u, MON), RebootDecision::At(MON + 2 * 3600));
        assert_eq!(reboot_decision(&u, MON + 3 * 3600), RebootDecision::Now);
        assert_eq!(
            reboot_decision(&u, MON + 4 * 3600),
            RebootDecision::At(MON + DAY + 2 * 3600)
        );
        // Saturdays and Sundays 23:00 for 3 h: Sunday 01:00 is inside Saturday's window.
        let u = auto(&["sat", "sun"], "23:00", 3);
        let sat = MON + 5 * DAY;
        // Monday 00:00 is inside Sunday's window; Monday noon waits for Saturday.
        assert_eq!(reboot_decision(&u, MON), RebootDecision::Now);
        assert_eq!(
            reboot_decision(&u, MON + 12 * 3600),
            RebootDecision::At(sat + 23 * 3600)
        );
        assert_eq!(reboot_decision(&u, sat + DAY + 3600), RebootDecision::Now);
        // Monday 01:00 is inside Sunday's window; Monday 03:00 waits for Saturday.
        assert_eq!(
            reboot_decision(&u, MON + 7 * DAY + 3600),
            RebootDecision::Now
        );
        assert_eq!(
            reboot_decision(&u, MON + 7 * DAY + 3 * 3600),
            RebootDecision::At(sat + 7 * DAY + 23 * 3600)
        );
        // A broken window never reboots by itself.
        assert_eq!(
            reboot_decision(&auto(&[], "25:00", 1), MON),
            RebootDecision::Manual
        );
    }
}
