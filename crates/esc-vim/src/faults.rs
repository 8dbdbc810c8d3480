//! API fault injection (issue 11, item 4): what the lab makes the VIM's
//! API do to a share of the calls, set from outside the OpenStack API (the
//! control plane, `control`). Decided per call by a seeded generator, so a
//! run is reproducible from its seed.
//!
//! | fault | what the caller sees | what the VIM did |
//! |---|---|---|
//! | `fail_rate` | 503 (Nova's `computeFault`) | nothing |
//! | `lose_rate` | 503 | the call (a create happened, say): the answer was lost |
//! | `stall_rate` | nothing for `stall_ms` (past its timeout), then the answer | the call, once the stall is over, even if the caller gave up meanwhile |
//! | `delay_ms` | every call answered that much later | the call |
//!
//! A lost answer and a stall are the faults that make a create's outcome
//! unknown to the manager: its lookup-before-create and its reconciliation
//! (the sweep) are what keep one server per VM then. A stall longer than
//! the manager's `create_doubt_ms` makes a create land after its VM was
//! created again: the sweep's case.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The faults in force (all zero: none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiFaults {
    pub fail_rate: f64,
    pub lose_rate: f64,
    pub stall_rate: f64,
    pub stall_ms: u64,
    pub delay_ms: u64,
    /// Seed of the generator (a new one restarts it).
    pub seed: u64,
}

impl ApiFaults {
    /// What is wrong with it, for the control plane's 400.
    pub fn check(&self) -> Result<(), String> {
        for (name, r) in [
            ("fail_rate", self.fail_rate),
            ("lose_rate", self.lose_rate),
            ("stall_rate", self.stall_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("{name}: must be between 0 and 1, not {r}"));
            }
        }
        if self.fail_rate + self.lose_rate + self.stall_rate > 1.0 {
            return Err("fail_rate + lose_rate + stall_rate: at most 1".into());
        }
        if self.stall_ms > 600_000 || self.delay_ms > 600_000 {
            return Err("stall_ms, delay_ms: at most 600000".into());
        }
        Ok(())
    }
}

/// What happens to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Handled after `delay_ms`.
    Pass {
        delay_ms: u64,
    },
    Fail,
    Lose,
    Stall {
        ms: u64,
    },
}

/// How many calls met each fate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FaultCounts {
    pub passed: u64,
    pub failed: u64,
    pub lost: u64,
    pub stalled: u64,
}

#[derive(Debug)]
pub struct Injector {
    faults: ApiFaults,
    rng: rand::rngs::StdRng,
    pub counts: FaultCounts,
}

impl Default for Injector {
    fn default() -> Injector {
        Injector::new(ApiFaults::default())
    }
}

impl Injector {
    pub fn new(faults: ApiFaults) -> Injector {
        Injector {
            rng: rand::rngs::StdRng::seed_from_u64(faults.seed),
            faults,
            counts: FaultCounts::default(),
        }
    }

    pub fn faults(&self) -> &ApiFaults {
        &self.faults
    }

    /// Replaces the faults (the counts stay).
    pub fn set(&mut self, faults: ApiFaults) {
        let counts = self.counts;
        *self = Injector::new(faults);
        self.counts = counts;
    }

    pub fn decide(&mut self) -> Fate {
        let f = &self.faults;
        let x: f64 = if f.fail_rate + f.lose_rate + f.stall_rate > 0.0 {
            self.rng.gen()
        } else {
            1.0
        };
        if x < f.fail_rate {
            self.counts.failed += 1;
            Fate::Fail
        } else if x < f.fail_rate + f.lose_rate {
            self.counts.lost += 1;
            Fate::Lose
        } else if x < f.fail_rate + f.lose_rate + f.stall_rate {
            self.counts.stalled += 1;
            Fate::Stall {
                ms: f.stall_ms.max(f.delay_ms),
            }
        } else {
            self.counts.passed += 1;
            Fate::Pass {
                delay_ms: f.delay_ms,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_met_and_a_seed_replays_the_same_fates() {
        let faults = ApiFaults {
            fail_rate: 0.05,
            lose_rate: 0.02,
            stall_rate: 0.01,
            stall_ms: 3_000,
            seed: 7,
            ..ApiFaults::default()
        };
        let mut a = Injector::new(faults.clone());
        let fates: Vec<Fate> = (0..20_000).map(|_| a.decide()).collect();
        let c = a.counts;
        assert_eq!(c.passed + c.failed + c.lost + c.stalled, 20_000);
        assert!((800..1_200).contains(&c.failed), "{c:?}");
        assert!((280..520).contains(&c.lost), "{c:?}");
        assert!((120..280).contains(&c.stalled), "{c:?}");
        let mut b = Injector::new(faults);
        assert!(
            fates.iter().all(|f| *f == b.decide()),
            "same seed, same fates"
        );
        assert_eq!(Injector::default().decide(), Fate::Pass { delay_ms: 0 });
    }

    #[test]
    fn bad_rates_are_refused_with_the_field() {
        let f = ApiFaults {
            fail_rate: 1.5,
            ..ApiFaults::default()
        };
        assert!(f.check().unwrap_err().starts_with("fail_rate"));
        let f = ApiFaults {
            fail_rate: 0.6,
            stall_rate: 0.6,
            ..ApiFaults::default()
        };
        assert!(f.check().is_err());
    }
}
