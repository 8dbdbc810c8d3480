//! [`Deliveries`]: the callback outbox's core (issue 11, item 6). From the
//! results owed to clients (`esc_domain::model::Callback`, replicated) and
//! what each POST came to, which to send now, which to commit as
//! delivered, and which to give up on.
//!
//! At least once: a result leaves the replicated outbox only after its POST
//! was answered 2xx (or after [`Config::attempts_max`] failures, logged as
//! abandoned), so a primary that dies between the POST and the commit is
//! followed by a second POST from the next one; receivers deduplicate by
//! the transaction id. One unreachable URL never holds the others: each
//! delivery has its own backoff, and at most [`Config::in_flight_max`] run
//! at once, each bounded by the runtime's timeout.

use esc_domain::model::Callback;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub in_flight_max: usize,
    /// Backoff after a failed POST: doubles from this...
    pub retry_base_ms: u64,
    /// ...up to this.
    pub retry_max_ms: u64,
    /// Failed POSTs of one result (on this primary) before it is abandoned.
    pub attempts_max: u32,
    /// A commit of delivered results not yet seen in the outbox after this
    /// is proposed again (it may have been lost in a role change).
    pub recommit_ms: u64,
    /// Most results one commit clears (`esc_domain`'s bound).
    pub commit_max: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            in_flight_max: 32,
            retry_base_ms: 500,
            retry_max_ms: 60_000,
            // About 15 minutes of retries at the defaults.
            attempts_max: 20,
            recommit_ms: 2_000,
            commit_max: esc_domain::command::CALLBACKS_PER_COMMAND_MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// The outbox as committed (after a change): every result still owed.
    Pending(Vec<Callback>),
    /// What the POST of `op_id` came to.
    Sent {
        op_id: String,
        ok: bool,
        error: String,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Output {
    /// POST this result; answer with `Input::Sent`.
    Post(Callback),
    /// Propose `Op::CallbacksDelivered` for these.
    Commit(Vec<String>),
    /// This result is given up on (it is in the next `Commit`): log it.
    Abandoned {
        op_id: String,
        url: String,
        attempts: u32,
        error: String,
    },
}

#[derive(Debug, Default)]
pub struct Deliveries {
    cfg: Config,
    pending: BTreeMap<String, Callback>,
    in_flight: BTreeSet<String>,
    failures: BTreeMap<String, u32>,
    not_before: BTreeMap<String, u64>,
    /// Delivered (or abandoned), to be committed.
    to_commit: BTreeSet<String>,
    /// Committed at this time, not yet gone from the outbox.
    committing: BTreeMap<String, u64>,
}

impl Deliveries {
    pub fn new(cfg: Config) -> Deliveries {
        Deliveries {
            cfg,
            ..Deliveries::default()
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Pending(list) => {
                self.pending = list.into_iter().map(|c| (c.op_id.clone(), c)).collect();
                let pending = &self.pending;
                self.failures.retain(|k, _| pending.contains_key(k));
                self.not_before.retain(|k, _| pending.contains_key(k));
                self.to_commit.retain(|k| pending.contains_key(k));
                self.committing.retain(|k, _| pending.contains_key(k));
            }
            Input::Sent { op_id, ok, error } => {
                if self.in_flight.remove(&op_id) && self.pending.contains_key(&op_id) {
                    self.on_sent(now_ms, op_id, ok, error, &mut out);
                }
            }
            Input::Tick => {}
        }
        self.plan(now_ms, &mut out);
        out
    }

    fn on_sent(
        &mut self,
        now_ms: u64,
        op_id: String,
        ok: bool,
        error: String,
        out: &mut Vec<Output>,
    ) {
        if ok {
            self.failures.remove(&op_id);
            self.to_commit.insert(op_id);
            return;
        }
        let n = self.failures.entry(op_id.clone()).or_insert(0);
        *n += 1;
        if *n >= self.cfg.attempts_max {
            let url = self
                .pending
                .get(&op_id)
                .map(|c| c.url.clone())
                .unwrap_or_default();
            out.push(Output::Abandoned {
                op_id: op_id.clone(),
                url,
                attempts: *n,
                error,
            });
            self.to_commit.insert(op_id);
            return;
        }
        let wait = self
            .cfg
            .retry_base_ms
            .saturating_mul(1 << (*n - 1).min(16))
            .min(self.cfg.retry_max_ms);
        self.not_before.insert(op_id, now_ms + wait);
    }

    fn plan(&mut self, now_ms: u64, out: &mut Vec<Output>) {
        let recommit: Vec<String> = self
            .committing
            .iter()
            .filter(|(_, at)| now_ms >= **at + self.cfg.recommit_ms)
            .map(|(k, _)| k.clone())
            .collect();
        self.to_commit.extend(recommit);
        if !self.to_commit.is_empty() {
            let batch: Vec<String> = self
                .to_commit
                .iter()
                .take(self.cfg.commit_max)
                .cloned()
                .collect();
            for k in &batch {
                self.to_commit.remove(k);
                self.committing.insert(k.clone(), now_ms);
            }
            out.push(Output::Commit(batch));
        }
        for (id, c) in &self.pending {
            if self.in_flight.len() >= self.cfg.in_flight_max {
                break;
            }
            let busy = self.in_flight.contains(id)
                || self.to_commit.contains(id)
                || self.committing.contains_key(id)
                || self.not_before.get(id).is_some_and(|t| now_ms < *t);
            if !busy {
                self.in_flight.insert(id.clone());
                out.push(Output::Post(c.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esc_domain::model::OperationState;

    fn cb(id: &str) -> Callback {
        Callback {
            op_id: id.into(),
            tid: format!("tid-{id}"),
            url: format!("http://192.0.2.9/{id}"),
            deployment: "d".into(),
            state: OperationState::Completed,
            message: None,
            settled_at_ms: 0,
        }
    }

    fn posts(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Post(c) => Some(c.op_id.clone()),
                _ => None,
            })
            .collect()
    }

    fn sent(d: &mut Deliveries, now: u64, id: &str, ok: bool) -> Vec<Output> {
        d.handle(
            now,
            Input::Sent {
                op_id: id.into(),
                ok,
                error: if ok { String::new() } else { "refused".into() },
            },
        )
    }

    #[test]
    fn a_result_is_posted_then_committed_and_not_posted_again_while_the_commit_lands() {
        let mut d = Deliveries::new(Config::default());
        let out = d.handle(0, Input::Pending(vec![cb("a"), cb("b")]));
        assert_eq!(posts(&out), ["a", "b"]);
        assert!(
            posts(&d.handle(1, Input::Tick)).is_empty(),
            "in flight: not twice"
        );
        let out = sent(&mut d, 2, "a", true);
        assert_eq!(out, [Output::Commit(vec!["a".into()])]);
        // The outbox still shows it (the commit has not applied yet).
        let out = d.handle(3, Input::Pending(vec![cb("a"), cb("b")]));
        assert!(posts(&out).is_empty(), "{out:?}");
        // The commit lost in a role change: proposed again, not re-posted.
        let out = d.handle(3 + 2_000, Input::Tick);
        assert_eq!(out, [Output::Commit(vec!["a".into()])]);
        // It applied.
        assert!(d.handle(5_000, Input::Pending(vec![cb("b")])).is_empty());
    }

    #[test]
    fn a_failing_url_backs_off_alone_and_is_abandoned_after_its_attempts() {
        let cfg = Config {
            attempts_max: 3,
            ..Config::default()
        };
        let mut d = Deliveries::new(cfg);
        d.handle(0, Input::Pending(vec![cb("bad")]));
        assert!(sent(&mut d, 10, "bad", false).is_empty(), "waits 500 ms");
        // Another result is posted meanwhile: the bad URL holds nothing.
        let out = d.handle(20, Input::Pending(vec![cb("bad"), cb("good")]));
        assert_eq!(posts(&out), ["good"]);
        assert_eq!(posts(&d.handle(510, Input::Tick)), ["bad"]);
        assert!(sent(&mut d, 520, "bad", false).is_empty(), "then 1 s");
        assert!(posts(&d.handle(1_500, Input::Tick)).is_empty());
        assert_eq!(posts(&d.handle(1_520, Input::Tick)), ["bad"]);
        let out = sent(&mut d, 1_530, "bad", false);
        assert!(
            matches!(&out[0], Output::Abandoned { op_id, attempts: 3, .. } if op_id == "bad"),
            "{out:?}"
        );
        assert_eq!(out[1], Output::Commit(vec!["bad".into()]));
    }

    #[test]
    fn in_flight_is_bounded_and_an_answer_for_a_result_gone_is_ignored() {
        let cfg = Config {
            in_flight_max: 2,
            ..Config::default()
        };
        let mut d = Deliveries::new(cfg);
        let out = d.handle(0, Input::Pending(vec![cb("a"), cb("b"), cb("c")]));
        assert_eq!(posts(&out), ["a", "b"]);
        // "a" was delivered by an earlier primary meanwhile: gone.
        d.handle(1, Input::Pending(vec![cb("b"), cb("c")]));
        let out = sent(&mut d, 2, "a", true);
        assert_eq!(posts(&out), ["c"], "its slot is free; no commit of it");
        assert_eq!(d.in_flight(), 2);
    }
}
