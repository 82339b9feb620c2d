//! Admission: how many requests run at once (slots), how many rows a fetch asks for
//! (batching), and the order of requests on one entity (each waits for the previous one, so a
//! `stop` sent after a `start` lands after it). It knows no queue and no plugin.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// How long a busy consumer waits for more free slots before fetching fewer rows.
pub const BATCH_WAIT: Duration = Duration::from_millis(2);

/// Slots and per-entity order.
#[derive(Debug)]
pub struct Scheduler {
    slots: Arc<Semaphore>,
    concurrency: usize,
    batch: usize,
    order: Mutex<HashMap<String, Arc<Line>>>,
}

/// Free slots taken for one fetch; each row fetched takes one with [`Slots::take`], the rest
/// go back when this is dropped.
#[derive(Debug)]
pub struct Slots(Option<OwnedSemaphorePermit>);

/// One request's slot: free again when dropped.
#[derive(Debug)]
pub struct Slot(#[expect(dead_code, reason = "held for its drop")] OwnedSemaphorePermit);

impl Slots {
    /// How many are held.
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One slot for one row.
    pub fn take(&mut self) -> Option<Slot> {
        let held = self.0.as_mut()?;
        if held.num_permits() > 1 {
            return held.split(1).map(Slot);
        }
        self.0.take().map(Slot)
    }
}

/// One entity's line: tickets are handed out in order; `head` is the first ticket not
/// finished (the request that runs, or is about to). One lock for all of it.
#[derive(Debug, Default)]
struct Line(Mutex<LineState>);

#[derive(Debug, Default)]
struct LineState {
    head: u64,
    next: u64,
    /// Finished ahead of the head (a turn dropped before its time): skipped when reached.
    finished: BTreeSet<u64>,
    /// Turns waiting for the head to reach a ticket, by that ticket: only they are woken when
    /// it does (not every turn of a long line at every move).
    waiters: BTreeMap<u64, Vec<oneshot::Sender<()>>>,
}

impl Line {
    fn state(&self) -> std::sync::MutexGuard<'_, LineState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every ticket handed out has finished.
    fn idle(&self) -> bool {
        let st = self.state();
        st.head >= st.next
    }
}

/// A request's place in its entity's line: [`Turn::wait`] returns when the requests before it
/// on the same entity have finished, [`Turn::near_in_groups`] when its group's turn is near;
/// dropping the turn lets the next one go.
#[derive(Debug)]
pub struct Turn {
    line: Arc<Line>,
    ticket: u64,
}

impl Turn {
    /// Waits for the previous requests on the entity to finish.
    pub async fn wait(&mut self) {
        self.until(|| self.ticket).await;
    }

    /// Waits until this request's group is near: the entity's tickets go in groups of `g`
    /// (`k*g .. (k+1)*g`), and a group is let through when the head is `g` tickets before its
    /// first, all of its requests at once. So at most `2g - 1` requests are ahead of one let
    /// through, and what they do ahead of their turn (record that they start) goes into one
    /// batch instead of one each as the head moves; `g` 0 waits for the turn itself.
    pub async fn near_in_groups(&self, g: u64) {
        self.until(|| match self.ticket.checked_rem(g) {
            Some(r) => (self.ticket - r).saturating_sub(g),
            None => self.ticket,
        })
        .await;
    }

    /// Waits until the head reaches the ticket `due()` returns (asked once, under the lock).
    async fn until(&self, due: impl FnOnce() -> u64) {
        let waiting = {
            let mut st = self.line.state();
            let due = due();
            if st.head >= due {
                return;
            }
            let (tx, rx) = oneshot::channel();
            st.waiters.entry(due).or_default().push(tx);
            rx
        };
        // The sender is dropped only with the line this turn holds, or sent: either way the
        // head has moved as far.
        let _ = waiting.await;
    }

    /// How many requests of the entity are ahead of this one now.
    pub fn ahead(&self) -> u64 {
        self.ticket.saturating_sub(self.line.state().head)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut st = self.line.state();
        st.finished.insert(self.ticket);
        while {
            let head = st.head;
            st.finished.remove(&head)
        } {
            st.head += 1;
        }
        // The turns waiting for a ticket the head has reached, taken from the front (no
        // split of the map: this runs once per request).
        let mut due = Vec::new();
        let head = st.head;
        while let Some(first) = st.waiters.first_entry() {
            if *first.key() > head {
                break;
            }
            due.extend(first.remove());
        }
        drop(st);
        for tx in due {
            let _ = tx.send(());
        }
    }
}

impl Scheduler {
    /// At most `concurrency` requests at once, at most `batch` rows a fetch (both at least 1).
    pub fn new(concurrency: usize, batch: usize) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            slots: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            batch: batch.max(1).min(concurrency),
            order: Mutex::default(),
        }
    }

    /// Waits for a free slot, then takes the slots one fetch should fill, at most `at_most`:
    /// every free one up to a batch; and when requests are running and fewer than half a
    /// batch are free, it waits [`BATCH_WAIT`] for more, so a busy queue is fetched in
    /// batches rather than one row per slot that comes back. Cancel-safe.
    pub async fn admit(&self, at_most: usize) -> Slots {
        let Ok(mut held) = self.slots.clone().acquire_many_owned(1).await else {
            return Slots(None);
        };
        let cap = self.batch;
        let free = self.slots.available_permits().min(cap - 1);
        if let Ok(more) = self
            .slots
            .clone()
            .try_acquire_many_owned(u32::try_from(free).unwrap_or(0))
        {
            held.merge(more);
        }
        let busy = self
            .concurrency
            .saturating_sub(self.slots.available_permits() + held.num_permits());
        let target = (cap / 2).max(1);
        if busy > 0 && held.num_permits() < target {
            let missing = u32::try_from(target - held.num_permits()).unwrap_or(0);
            if let Ok(Ok(more)) =
                tokio::time::timeout(BATCH_WAIT, self.slots.clone().acquire_many_owned(missing))
                    .await
            {
                held.merge(more);
            }
        }
        let keep = held.num_permits().min(at_most.max(1));
        if keep < held.num_permits() {
            // Give back what the limit leaves unused.
            drop(held.split(held.num_permits() - keep));
        }
        Slots(Some(held))
    }

    /// The turn of a request on `entity`, in the order the turns are taken.
    pub fn turn(&self, entity: &str) -> Turn {
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        // Lines whose last request has finished are forgotten, so the map holds only the
        // entities with work in flight.
        order.retain(|_, line| !line.idle());
        let line = order.entry(entity.to_owned()).or_default().clone();
        let ticket = {
            let mut st = line.state();
            st.next += 1;
            st.next - 1
        };
        Turn { line, ticket }
    }

    /// Waits until every slot is free: everything admitted has finished.
    pub async fn drain(&self) {
        let _ = self
            .slots
            .acquire_many(u32::try_from(self.concurrency).unwrap_or(u32::MAX))
            .await;
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.concurrency
            .saturating_sub(self.slots.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_scheduler_admits_a_whole_batch_at_once() {
        let s = Scheduler::new(8, 4);
        let mut slots = s.admit(usize::MAX).await;
        assert_eq!(slots.len(), 4, "a batch, not all eight");
        let a = slots.take().unwrap();
        assert_eq!(s.running(), 4);
        drop(slots);
        assert_eq!(s.running(), 1, "unused slots go back");
        drop(a);
        assert_eq!(s.admit(3).await.len(), 3, "the limit caps a batch");
        assert_eq!(s.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_scheduler_waits_a_moment_to_fill_half_a_batch() {
        let s = Arc::new(Scheduler::new(4, 4));
        let mut all = s.admit(usize::MAX).await;
        let running: Vec<Slot> = std::iter::from_fn(|| all.take()).collect();
        assert_eq!(s.running(), 4);
        // One slot comes back: the next admission waits BATCH_WAIT for a second one.
        let mut running = running.into_iter();
        drop(running.next());
        let t0 = tokio::time::Instant::now();
        let second = running.next();
        let s2 = s.clone();
        let admitted = tokio::spawn(async move { s2.admit(usize::MAX).await.len() });
        tokio::time::sleep(Duration::from_millis(1)).await;
        drop(second);
        assert_eq!(admitted.await.unwrap(), 2, "two slots for one fetch");
        assert!(t0.elapsed() < BATCH_WAIT);
        // No second slot in time: one is enough after BATCH_WAIT.
        let kept = s.admit(usize::MAX).await;
        assert_eq!(kept.len(), 2);
        drop(running.next());
        let t0 = tokio::time::Instant::now();
        assert_eq!(s.admit(usize::MAX).await.len(), 1);
        assert!(t0.elapsed() >= BATCH_WAIT);
        drop(kept);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_on_one_entity_run_in_order_and_others_do_not_wait() {
        let s = Arc::new(Scheduler::new(8, 8));
        let log = Arc::new(Mutex::new(Vec::new()));
        let at_once = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for (i, entity) in ["a", "a", "b", "a"].into_iter().enumerate() {
            let mut turn = s.turn(entity);
            let (log, at_once) = (log.clone(), at_once.clone());
            tasks.push(tokio::spawn(async move {
                turn.wait().await;
                let n = at_once.fetch_add(1, Ordering::SeqCst) + 1;
                log.lock().unwrap().push((i, entity, n));
                // Later requests take less time: without the line they would finish first.
                tokio::time::sleep(Duration::from_millis(40 - 10 * i as u64)).await;
                at_once.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let log = log.lock().unwrap();
        let a: Vec<usize> = log.iter().filter(|e| e.1 == "a").map(|e| e.0).collect();
        assert_eq!(a, [0, 1, 3]);
        let b = log.iter().find(|e| e.1 == "b").unwrap();
        assert_eq!(b.2, 2, "b runs beside the first a");
        // Lines whose requests have all finished are forgotten at the next turn.
        let _next = s.turn("c");
        assert_eq!(s.order.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn near_returns_when_the_group_is_near_and_a_turn_dropped_early_is_skipped() {
        let s = Scheduler::new(8, 8);
        let mut first = s.turn("a");
        let second = s.turn("a");
        let mut third = s.turn("a");
        let other = s.turn("b");
        assert_eq!(other.ahead(), 0, "another entity's line");
        first.wait().await;
        assert_eq!(third.ahead(), 2);
        let short = Duration::from_millis(10);
        // Groups of one: let through one before its turn; of two (tickets 2 and 3): two.
        assert!(
            tokio::time::timeout(short, third.near_in_groups(1))
                .await
                .is_err()
        );
        tokio::time::timeout(short, third.near_in_groups(2))
            .await
            .unwrap();
        // The second is dropped before its time (its task ended): the head waits for the
        // first, then moves past both.
        drop(second);
        assert_eq!(third.ahead(), 2);
        assert!(tokio::time::timeout(short, third.wait()).await.is_err());
        drop(first);
        tokio::time::timeout(short, third.wait()).await.unwrap();
        assert_eq!(third.ahead(), 0);
        drop(third);
        let _next = s.turn("c");
        assert_eq!(
            s.order.lock().unwrap().len(),
            2,
            "a's line is forgotten, b's kept"
        );
    }

    /// A group's requests are let through together when the head is a group before it (so
    /// their start records go in one batch), and never more than `2g - 1` ahead of the head.
    #[tokio::test(start_paused = true)]
    async fn a_group_is_let_through_together_at_most_twice_its_size_ahead() {
        let s = Scheduler::new(64, 64);
        let g = 4;
        let mut turns: Vec<Turn> = (0..16).map(|_| s.turn("a")).collect();
        let short = Duration::from_millis(10);
        let through = |turns: &[Turn]| {
            let futs: Vec<_> = turns.iter().map(|t| t.near_in_groups(g)).collect();
            futs.into_iter()
                .map(|f| futures_util::FutureExt::now_or_never(Box::pin(f)).is_some())
                .collect::<Vec<bool>>()
        };
        // Head 0: the first two groups (tickets 0..8) are through, the others wait.
        assert_eq!(
            through(&turns),
            [[true; 8], [false; 8]].concat(),
            "head at 0"
        );
        // The head moves within the first group: nothing more is let through.
        for _ in 0..3 {
            let mut t = turns.remove(0);
            t.wait().await;
            drop(t);
        }
        assert_eq!(
            through(&turns),
            [&[true; 5][..], &[false; 8]].concat(),
            "head at 3"
        );
        // It reaches ticket 4: the whole third group (8..12) at once, 7 = 2g - 1 ahead at most.
        let mut t = turns.remove(0);
        t.wait().await;
        drop(t);
        assert_eq!(
            through(&turns),
            [&[true; 8][..], &[false; 4]].concat(),
            "head at 4"
        );
        let most = turns[..8].iter().map(Turn::ahead).max();
        assert_eq!(most, Some(2 * g - 1));
        assert!(
            tokio::time::timeout(short, turns[8].near_in_groups(g))
                .await
                .is_err()
        );
        // No groups: the turn itself.
        assert!(
            tokio::time::timeout(short, turns[1].near_in_groups(0))
                .await
                .is_err()
        );
        tokio::time::timeout(short, turns[0].near_in_groups(0))
            .await
            .unwrap();
    }

    /// Turns taken, waited for and dropped from many threads at once finish (a lock-order
    /// inversion between a line's tickets and its head once hung the consumer here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_turns_on_few_lines_from_many_threads_all_finish() {
        let s = Arc::new(Scheduler::new(64, 64));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..4000 {
            let turn = s.turn(["a", "b", "c"][i % 3]);
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let mut turn = turn;
                turn.near_in_groups(2).await;
                turn.wait().await;
                tokio::task::yield_now().await;
                done.fetch_add(1, Ordering::Relaxed);
            }));
            if i % 7 == 0 {
                // Lines forgotten and made again while others finish.
                let _ = s.turn("d");
            }
        }
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("every turn finished");
        assert_eq!(done.load(Ordering::Relaxed), 4000);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_everything_admitted() {
        let s = Arc::new(Scheduler::new(2, 2));
        let mut slots = s.admit(usize::MAX).await;
        let slot = slots.take().unwrap();
        drop(slots);
        let s2 = s.clone();
        let drained = tokio::spawn(async move {
            s2.drain().await;
            tokio::time::Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let released = tokio::time::Instant::now();
        drop(slot);
        assert!(drained.await.unwrap() >= released);
    }
}
