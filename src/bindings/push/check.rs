//! Whether an authenticated snapshot applies here: this gateway, newer than what it accepted
//! before, young enough, and every binding valid.

use std::time::Duration;

use super::accepted::Accepted;
use super::envelope::Authenticated;
use super::refused::Refused;

/// What this gateway accepted before: the snapshot in force (from the binding table) and the
/// one remembered in the accepted-version file, which outlives the cache.
#[derive(Debug, Clone, Default)]
pub struct Before {
    pub in_force: u64,
    pub remembered: Option<Accepted>,
}

/// Checks an authenticated snapshot against this gateway: its id, what it accepted before,
/// the age limit and the bindings themselves.
pub fn check(
    a: &Authenticated,
    gateway_id: &str,
    before: &Before,
    now_ns: i64,
    max_age: Duration,
) -> Result<(), Refused> {
    let snap = &a.snapshot;
    if snap.gateway != "*" && snap.gateway != gateway_id {
        return Err(Refused::OtherGateway(crate::model::loggable(&snap.gateway)));
    }
    let got = snap.version;
    if got <= before.in_force {
        return Err(Refused::NotNewer { got, have: before.in_force });
    }
    if let Some(r) = &before.remembered {
        // The remembered snapshot itself may come back (the cache was lost, the broker still
        // retains it); anything else at or below its version is a rollback.
        let same = got == r.version && a.sha256 == r.sha256;
        if got <= r.version && !same {
            return Err(Refused::NotNewer { got, have: r.version });
        }
    }
    let age_ns = now_ns.saturating_sub(a.created_ns);
    if age_ns > i64::try_from(max_age.as_nanos()).unwrap_or(i64::MAX) {
        return Err(Refused::TooOld { got, hours: age_ns / 3_600_000_000_000 });
    }
    let problems: Vec<String> = snap
        .bindings
        .iter()
        .enumerate()
        .flat_map(|(i, b)| b.problems().into_iter().map(move |p| format!("binding[{i}]: {p}")))
        .collect();
    if !problems.is_empty() {
        return Err(Refused::Invalid(problems.join("; ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::push::envelope::{Envelope, Snapshot, authenticate, generate_key, sign};

    const HOUR_NS: i64 = 3_600_000_000_000;
    const MAX_AGE: Duration = Duration::from_secs(720 * 3600);

    fn snapshot(version: u64, gateway: &str) -> Snapshot {
        Snapshot { gateway: gateway.into(), version, created_at: "2026-11-28T00:00:00Z".into(), bindings: vec![] }
    }

    fn created_ns() -> i64 {
        crate::model::parse_rfc3339("2026-11-28T00:00:00Z").expect("time")
    }

    fn before(in_force: u64) -> Before {
        Before { in_force, remembered: None }
    }

    /// Authenticates and checks, as the two stages do one after the other.
    fn verify(payload: &[u8], trusted: &[String], gateway_id: &str, before: &Before) -> Result<u64, Refused> {
        let a = authenticate(payload, trusted)?;
        check(&a, gateway_id, before, created_ns() + HOUR_NS, MAX_AGE)?;
        Ok(a.snapshot.version)
    }

    #[test]
    fn only_trusted_newer_snapshots_for_this_gateway_pass() {
        let (private, public) = generate_key().expect("key");
        let (other_private, _) = generate_key().expect("key");
        let trusted = vec![public.clone()];
        let good = sign(&snapshot(5, "gw-1"), &private).expect("sign");
        assert_eq!(verify(good.as_bytes(), &trusted, "gw-1", &before(4)), Ok(5));
        assert_eq!(verify(good.as_bytes(), &trusted, "gw-1", &before(5)), Err(Refused::NotNewer { got: 5, have: 5 }));
        assert!(matches!(verify(good.as_bytes(), &trusted, "gw-2", &before(0)), Err(Refused::OtherGateway(_))));
        let stranger = sign(&snapshot(9, "gw-1"), &other_private).expect("sign");
        assert_eq!(verify(stranger.as_bytes(), &trusted, "gw-1", &before(0)), Err(Refused::UntrustedKey));
        // The same envelope with a tampered snapshot.
        let mut env: Envelope = serde_json::from_str(&good).expect("env");
        env.snapshot = env.snapshot.replace("\"version\":5", "\"version\":50");
        let tampered = serde_json::to_string(&env).expect("json");
        assert_eq!(verify(tampered.as_bytes(), &trusted, "gw-1", &before(0)), Err(Refused::BadSignature));
        assert!(matches!(verify(b"{}", &trusted, "gw-1", &before(0)), Err(Refused::Malformed(_))));
        let all = sign(&snapshot(6, "*"), &private).expect("sign");
        assert!(verify(all.as_bytes(), &trusted, "gw-9", &before(0)).is_ok());
    }

    #[test]
    fn the_remembered_snapshot_bars_older_ones_and_may_come_back_itself() {
        let (private, public) = generate_key().expect("key");
        let trusted = vec![public];
        let v5 = authenticate(sign(&snapshot(5, "gw"), &private).expect("sign").as_bytes(), &trusted).expect("v5");
        let remembered = Accepted { version: 5, created_at: v5.snapshot.created_at.clone(), sha256: v5.sha256.clone() };
        // The cache is gone (nothing in force), the memory is not.
        let lost = Before { in_force: 0, remembered: Some(remembered) };
        let at = |v: u64, gateway: &str| {
            let a = authenticate(sign(&snapshot(v, gateway), &private).expect("sign").as_bytes(), &trusted);
            check(&a.expect("authentic"), "gw", &lost, created_ns(), MAX_AGE)
        };
        assert_eq!(at(3, "gw"), Err(Refused::NotNewer { got: 3, have: 5 }));
        // Version 5 again, but other bytes: not the snapshot remembered.
        assert_eq!(at(5, "*"), Err(Refused::NotNewer { got: 5, have: 5 }));
        assert_eq!(check(&v5, "gw", &lost, created_ns(), MAX_AGE), Ok(()));
        assert_eq!(at(6, "gw"), Ok(()));
        // Once in force, the same snapshot is not applied again.
        let applied = Before { in_force: 5, ..lost };
        assert_eq!(check(&v5, "gw", &applied, created_ns(), MAX_AGE), Err(Refused::NotNewer { got: 5, have: 5 }));
    }

    #[test]
    fn snapshots_older_than_the_age_limit_are_refused() {
        let (private, public) = generate_key().expect("key");
        let trusted = [public];
        let a =
            authenticate(sign(&snapshot(5, "gw"), &private).expect("sign").as_bytes(), &trusted).expect("authentic");
        let at_age = |hours: i64| check(&a, "gw", &before(0), created_ns() + hours * HOUR_NS, MAX_AGE);
        assert_eq!(at_age(720), Ok(()));
        assert_eq!(at_age(721), Err(Refused::TooOld { got: 5, hours: 721 }));
        let mut bad_time = snapshot(6, "gw");
        bad_time.created_at = "yesterday".into();
        let env = sign(&bad_time, &private).expect("sign");
        assert!(matches!(authenticate(env.as_bytes(), &trusted), Err(Refused::Malformed(_))));
    }
}
