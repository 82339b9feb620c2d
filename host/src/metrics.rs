//! The service's Prometheus metrics. A data type like `config`: it imports no stage, and the
//! stages that see an event count it (the service answers, the runtime loads, a capability
//! denies). The process has one set, installed by the CLI when `[http] listen` is set; until
//! then [`get`] is `None` and nothing is counted (a metrics-off manager pays one load per
//! event).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// `plugin`, `action`, `outcome`.
type AnswerLabels = [(&'static str, String); 3];
/// `plugin`, `action`.
type ActionLabels = [(&'static str, String); 2];
/// One label.
type OneLabel = [(&'static str, String); 1];

/// What an answer was, for `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin did what was asked.
    Success,
    /// It failed, or the request was refused before any plugin ran.
    Failure,
    /// Answered from the ledger: a redelivery or a retry of an answered request.
    Ledger,
    /// Older than its timeout: answered without running.
    Expired,
    /// Started by a process that stopped: answered without running again.
    Interrupted,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Ledger => "ledger",
            Self::Expired => "expired",
            Self::Interrupted => "interrupted",
        }
    }
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    answered: Family<AnswerLabels, Counter>,
    effects: Family<[(&'static str, String); 3], Counter>,
    duration: Family<ActionLabels, Histogram, fn() -> Histogram>,
    denials: Family<OneLabel, Counter>,
    load_failures: Counter,
    plugins_loaded: Gauge,
    overrides: Family<[(&'static str, String); 4], Gauge>,
    in_flight: Gauge,
    queue_depth: Family<OneLabel, Gauge>,
    oldest_waiting: Family<OneLabel, Gauge<f64, AtomicU64>>,
    dedups: Counter,
    fetch_errors: Counter,
    commit_errors: Counter,
    parked: Counter,
    ready: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    fn new(version: &str) -> Self {
        let mut registry = Registry::with_prefix("marvin_manager");
        let m = Self {
            answered: Family::default(),
            effects: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            denials: Family::default(),
            load_failures: Counter::default(),
            plugins_loaded: Gauge::default(),
            overrides: Family::default(),
            in_flight: Gauge::default(),
            queue_depth: Family::default(),
            oldest_waiting: Family::default(),
            dedups: Counter::default(),
            fetch_errors: Counter::default(),
            commit_errors: Counter::default(),
            parked: Counter::default(),
            ready: Gauge::default(),
            registry: Registry::default(),
        };
        let info: Family<OneLabel, Gauge> = Family::default();
        info.get_or_create(&[("version", version.to_owned())])
            .set(1);
        registry.register("build_info", "The running version", info);
        registry.register(
            "requests_answered",
            "Requests answered, by plugin, action and outcome (success, failure, ledger, expired, interrupted)",
            m.answered.clone(),
        );
        registry.register(
            "request_effects",
            "Requests carried out, by plugin, action and effect: changed (a changing host call worked), unchanged, or dry_run (planned, nothing done)",
            m.effects.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "How long requests took to carry out, by plugin and action",
            Unit::Seconds,
            m.duration.clone(),
        );
        registry.register(
            "permission_denials",
            "Host calls refused because the operator did not grant them, by plugin",
            m.denials.clone(),
        );
        registry.register(
            "plugin_load_failures",
            "Plugin files that could not be loaded",
            m.load_failures.clone(),
        );
        registry.register(
            "plugins_loaded",
            "Plugins serving now",
            m.plugins_loaded.clone(),
        );
        registry.register(
            "plugin_overrides",
            "Actions of a built-in plugin served by a plugin of the directory (1 each), by plugin, built-in, kind and action",
            m.overrides.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being carried out now",
            m.in_flight.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting in the queue (available now), by queue",
            m.queue_depth.clone(),
        );
        registry.register_with_unit(
            "oldest_waiting_request_age",
            "Age of the oldest request waiting in the queue, by queue (0 when none waits)",
            Unit::Seconds,
            m.oldest_waiting.clone(),
        );
        registry.register(
            "ledger_dedups",
            "Requests answered again from the ledger instead of running twice",
            m.dedups.clone(),
        );
        registry.register(
            "fetch_errors",
            "Fetches from the queue that failed",
            m.fetch_errors.clone(),
        );
        registry.register(
            "commit_errors",
            "Commits of answers that failed (and were retried)",
            m.commit_errors.clone(),
        );
        registry.register(
            "parked_rows",
            "Rows moved to the failure queue because they cannot be decoded",
            m.parked.clone(),
        );
        registry.register(
            "ready",
            "1 when the queue is reachable and the plugins are loaded",
            m.ready.clone(),
        );
        Self { registry, ..m }
    }

    /// An answer left: counted by plugin (`-` when none ran), action and outcome.
    pub fn answered(&self, plugin: &str, action: &str, outcome: Outcome) {
        self.answered
            .get_or_create(&[
                ("plugin", plugin.to_owned()),
                ("action", action.to_owned()),
                ("outcome", outcome.label().to_owned()),
            ])
            .inc();
        if outcome == Outcome::Ledger {
            self.dedups.inc();
        }
    }

    /// What a request carried out changed: `changed`, `unchanged` or `dry_run`.
    pub fn effect(&self, plugin: &str, action: &str, effect: &'static str) {
        self.effects
            .get_or_create(&[
                ("plugin", plugin.to_owned()),
                ("action", action.to_owned()),
                ("effect", effect.to_owned()),
            ])
            .inc();
    }

    /// A plugin carried an action out in `seconds`.
    pub fn duration(&self, plugin: &str, action: &str, seconds: f64) {
        self.duration
            .get_or_create(&[("plugin", plugin.to_owned()), ("action", action.to_owned())])
            .observe(seconds);
    }

    /// A host call was refused.
    pub fn denied(&self, plugin: &str) {
        self.denials
            .get_or_create(&[("plugin", plugin.to_owned())])
            .inc();
    }

    /// The plugins now: their names (each gets its denial counter, at 0 until one comes, so
    /// rates over it are defined), and how many files failed to load (counted when the count
    /// grows: a failure stays counted once until the file changes).
    pub fn plugins<'a>(&self, serving: impl IntoIterator<Item = &'a str>, failures_added: usize) {
        let mut loaded = 0i64;
        for name in serving {
            let _ = self.denials.get_or_create(&[("plugin", name.to_owned())]);
            loaded += 1;
        }
        self.plugins_loaded.set(loaded);
        self.load_failures
            .inc_by(u64::try_from(failures_added).unwrap_or(u64::MAX));
    }

    /// The overrides now: (plugin, built-in, kind, action) each.
    pub fn overrides<'a>(
        &self,
        now: impl IntoIterator<Item = (&'a str, &'a str, &'a str, &'a str)>,
    ) {
        self.overrides.clear();
        for (plugin, builtin, kind, action) in now {
            self.overrides
                .get_or_create(&[
                    ("plugin", plugin.to_owned()),
                    ("builtin", builtin.to_owned()),
                    ("kind", kind.to_owned()),
                    ("action", action.to_owned()),
                ])
                .set(1);
        }
    }

    /// `delta` more (or fewer) requests run now.
    pub fn running(&self, delta: i64) {
        self.in_flight.inc_by(delta);
    }

    /// What a look at the queue found.
    pub fn queue(&self, queue: &str, depth: u64, oldest_secs: f64) {
        let label = [("queue", queue.to_owned())];
        self.queue_depth
            .get_or_create(&label)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.oldest_waiting.get_or_create(&label).set(oldest_secs);
    }

    /// A fetch failed.
    pub fn fetch_error(&self) {
        self.fetch_errors.inc();
    }

    /// A commit of answers failed.
    pub fn commit_error(&self) {
        self.commit_errors.inc();
    }

    /// Rows were parked in the failure queue.
    pub fn parked(&self, n: usize) {
        self.parked.inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Whether the service is ready.
    pub fn ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

static METRICS: OnceLock<Metrics> = OnceLock::new();
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns counting on (once per process; later calls return the same set).
pub fn install(version: &str) -> &'static Metrics {
    let m = METRICS.get_or_init(|| Metrics::new(version));
    ENABLED.store(true, Ordering::Relaxed);
    m
}

/// Pauses or resumes counting once installed (the benchmark compares both in one run).
pub fn set_enabled(on: bool) {
    ENABLED.store(on && METRICS.get().is_some(), Ordering::Relaxed);
}

/// The metrics, when counting is on.
pub fn get() -> Option<&'static Metrics> {
    if ENABLED.load(Ordering::Relaxed) {
        METRICS.get()
    } else {
        None
    }
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text() {
        let m = Metrics::new("9.9.9");
        m.answered("echo", "start", Outcome::Success);
        m.answered("echo", "start", Outcome::Ledger);
        m.duration("echo", "start", 0.004);
        m.queue("manager_requests", 3, 1.5);
        let text = m.encode();
        assert!(
            text.contains(
                "marvin_manager_requests_answered_total{plugin=\"echo\",action=\"start\",outcome=\"success\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("marvin_manager_ledger_dedups_total 1"),
            "{text}"
        );
        assert!(
            text.contains("marvin_manager_request_duration_seconds_bucket{"),
            "{text}"
        );
        assert!(
            text.contains("marvin_manager_queue_depth{queue=\"manager_requests\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("marvin_manager_build_info{version=\"9.9.9\"} 1"),
            "{text}"
        );
    }
}
