//! The ledger: what was answered, keyed by correlation id. Its rows are written by the
//! transport in the same transaction as the answer and the request's deletion (so an answer
//! and its ledger row exist together or not at all); this module decides what goes in them,
//! looks a fetched batch up so a request answered before (a redelivery, a retry by Core) gets
//! the same answer again without running twice, and remembers the answers of this process
//! for duplicates still in flight. History and the failure queue are read through
//! [`crate::transport::Records`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::message::ManagerResponse;
pub use crate::transport::LedgerEntry;
use crate::transport::Queue;

/// The ledger row of an answer: `received_at` when the request was taken, `elapsed` the time
/// it took (`finished_at` is set by the transport at commit).
pub fn entry(response: &ManagerResponse, received_at: String, elapsed: Duration) -> LedgerEntry {
    let dry_run = response.metadata.get("dry_run") == Some(&serde_json::Value::Bool(true));
    LedgerEntry {
        correlation_id: if dry_run {
            dry_run_key(&response.correlation_id)
        } else {
            response.correlation_id.clone()
        },
        entity_id: response.entity_id.clone(),
        action: response.action.clone(),
        plugin: response
            .metadata
            .get("plugin")
            .and_then(|p| p.as_str())
            .map(str::to_owned),
        success: response.success,
        error: response.error.clone(),
        response: crate::transport::LedgerResponse::of(response),
        received_at,
        finished_at: String::new(),
        duration_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
        manager: None,
    }
}

/// What marks a dry run's ledger entry: its key is the correlation id with this after it, so
/// the entry is kept and listed as a dry run, and never found as the answer to a real request
/// with that correlation id (whose own answer then takes the id itself).
pub const DRY_RUN_SUFFIX: &str = "#dry-run";

/// The ledger key of a dry run of `correlation_id` (its end cut to fit the column).
pub fn dry_run_key(correlation_id: &str) -> String {
    let room = crate::transport::MAX_CORRELATION_ID_BYTES - DRY_RUN_SUFFIX.len();
    let mut end = correlation_id.len().min(room);
    while !correlation_id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{DRY_RUN_SUFFIX}", &correlation_id[..end])
}

/// The answers the ledger holds for one fetched batch.
#[derive(Debug, Default)]
pub struct Known(HashMap<String, LedgerEntry>);

impl Known {
    /// Looks up `correlation_ids`. A ledger that cannot be read is logged and treated as
    /// empty: the requests run (without dedup) rather than wait.
    pub async fn lookup<Q: Queue>(queue: &Q, correlation_ids: Vec<String>) -> Self {
        if correlation_ids.is_empty() {
            return Self::default();
        }
        match queue.answered(correlation_ids).await {
            Ok(m) => Self(m),
            Err(e) => {
                tracing::error!(cause = %e, "cannot read the ledger; requests run without dedup");
                Self::default()
            }
        }
    }

    /// Adds entries read otherwise (by the fetch statement itself).
    pub fn add(&mut self, entries: impl IntoIterator<Item = LedgerEntry>) {
        self.0
            .extend(entries.into_iter().map(|e| (e.correlation_id.clone(), e)));
    }

    /// The answer given before to `correlation_id`, if any (and readable).
    pub fn answer(&self, correlation_id: &str) -> Option<ManagerResponse> {
        self.0
            .get(correlation_id)
            .and_then(|e| serde_json::from_str(e.response.text()).ok())
    }
}

/// Answers given by this process, by correlation id: a duplicate taken while its twin is
/// still running, or in the same batch, gets the same answer without a ledger read. Bounded
/// by two generations of [`Recent::CAP`] answers: when the newer is full it becomes the older
/// and the older is forgotten (the ledger still has it), so the last `CAP` answers are always
/// known, and the forgotten generation is freed after the lock is let go (10,000 answers
/// freed under it held every other answer for milliseconds).
#[derive(Debug, Default)]
pub struct Recent {
    generations: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    newer: HashMap<String, Arc<ManagerResponse>>,
    older: HashMap<String, Arc<ManagerResponse>>,
}

impl Recent {
    /// Answers in one generation.
    pub const CAP: usize = 10_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.generations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The answer given to `correlation_id`, if this process gave one.
    pub fn get(&self, correlation_id: &str) -> Option<Arc<ManagerResponse>> {
        let g = self.lock();
        g.newer
            .get(correlation_id)
            .or_else(|| g.older.get(correlation_id))
            .cloned()
    }

    /// Remembers an answer (shared, not copied: this is on every answer's path).
    pub fn put(&self, r: Arc<ManagerResponse>) {
        let forgotten = {
            let mut g = self.lock();
            let forgotten = if g.newer.len() >= Self::CAP {
                let newer = std::mem::replace(&mut g.newer, HashMap::with_capacity(Self::CAP));
                Some(std::mem::replace(&mut g.older, newer))
            } else {
                None
            };
            g.newer.insert(r.correlation_id.clone(), r);
            forgotten
        };
        drop(forgotten);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Encoded, Format, encode_request};
    use crate::message::{EntityKind, ManagerRequest};
    use crate::transport::memory::MemoryQueue;
    use crate::transport::{Settle, TransportOptions};

    fn response(id: &str) -> ManagerResponse {
        let mut r = ManagerResponse::failure(
            &ManagerRequest::new(id, "web", "start"),
            EntityKind::Container,
            "no",
        );
        r.metadata.insert("plugin".into(), "docker-compose".into());
        r
    }

    #[test]
    fn an_entry_says_what_was_answered() {
        let e = entry(&response("c1"), "t0".into(), Duration::from_millis(42));
        assert_eq!(
            (
                e.correlation_id.as_str(),
                e.entity_id.as_str(),
                e.action.as_str()
            ),
            ("c1", "web", "start")
        );
        assert_eq!(e.plugin.as_deref(), Some("docker-compose"));
        assert!(!e.success);
        assert_eq!(e.error.as_deref(), Some("no"));
        assert_eq!(e.duration_ms, 42);
        assert_eq!(e.response.value()["correlationId"], "c1");
    }

    #[tokio::test]
    async fn a_committed_answer_is_found_again_and_a_broken_ledger_means_none() {
        let q = MemoryQueue::new(TransportOptions::default());
        let id = q
            .send(
                "default",
                encode_request(
                    &ManagerRequest::new("c1", "web", "start"),
                    Format::Php,
                    None,
                ),
            )
            .await
            .unwrap();
        q.complete(vec![Settle::Reply {
            request_id: id,
            response: Encoded {
                body: "r".into(),
                headers: "[]".into(),
            },
            ledger: Some(Box::new(entry(
                &response("c1"),
                "t0".into(),
                Duration::ZERO,
            ))),
        }])
        .await
        .unwrap();
        let known = Known::lookup(&q, vec!["c1".into(), "c2".into()]).await;
        assert_eq!(known.answer("c1"), Some(response("c1")));
        assert_eq!(known.answer("c2"), None);
        assert!(Known::lookup(&q, vec![]).await.answer("c1").is_none());
    }

    #[test]
    fn recent_answers_are_bounded_and_the_last_ones_always_kept() {
        let recent = Recent::default();
        recent.put(Arc::new(response("a")));
        assert_eq!(recent.get("a").as_deref(), Some(&response("a")));
        // A full generation later, "a" is still known (it is in the older one), and so is
        // every answer since.
        for i in 0..Recent::CAP {
            recent.put(Arc::new(response(&format!("x{i}"))));
        }
        assert_eq!(recent.get("a").as_deref(), Some(&response("a")));
        // Another generation later, "a" is forgotten; the last CAP answers never are.
        for i in 0..Recent::CAP {
            recent.put(Arc::new(response(&format!("y{i}"))));
            let kept = if i + 1 < Recent::CAP {
                format!("x{}", i + 1)
            } else {
                "y0".into()
            };
            assert!(recent.get(&kept).is_some(), "{kept} forgotten at y{i}");
        }
        assert_eq!(recent.get("a"), None, "forgotten two generations later");
        let g = recent.lock();
        assert!(g.newer.len() <= Recent::CAP && g.older.len() <= Recent::CAP);
    }
}
