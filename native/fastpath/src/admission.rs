//! Earliest-deadline-first admission in front of the upstream calls: `workers/router/edf.py`'s
//! `EdfAdmission`, rule for rule.
//!
//! At most `concurrency` requests go upstream at once; the others wait in a bounded queue ordered by
//! (deadline, arrival), requests without a deadline last. A request that finds the queue full is refused
//! at once (429), one whose deadline passes while it waits is failed (504), and a released slot goes to the
//! earliest waiter still in time. [`EdfQueue`] is the pure data structure (tested with an explicit `now`);
//! [`Admission`] adds the waiting and the count. A waiter whose future is dropped (its client went away)
//! leaves the queue, and gives its slot back if it had just been granted one.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

/// A deadline in queue order: any deadline before none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key(Option<Instant>);

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.0, other.0) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The queue is full: `max_size` requests wait already.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull(pub usize);

/// A bounded priority queue by (deadline, arrival) with O(1) removal of any entry (lazy deletion).
pub struct EdfQueue<T> {
    heap: BinaryHeap<Reverse<(Key, u64)>>,
    live: HashMap<u64, (Option<Instant>, T)>,
    next: u64,
    max_size: usize,
}

impl<T> EdfQueue<T> {
    pub fn new(max_size: usize) -> Self {
        EdfQueue { heap: BinaryHeap::new(), live: HashMap::new(), next: 0, max_size: max_size.max(1) }
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// A smaller bound refuses newcomers until enough waiters left; nobody already waiting is dropped.
    pub fn set_max_size(&mut self, max_size: usize) {
        self.max_size = max_size.max(1);
    }

    /// Queue `item`; its id, or [`QueueFull`].
    pub fn push(&mut self, deadline: Option<Instant>, item: T) -> Result<u64, QueueFull> {
        if self.live.len() >= self.max_size {
            return Err(QueueFull(self.max_size));
        }
        let id = self.next;
        self.next += 1;
        self.heap.push(Reverse((Key(deadline), id)));
        self.live.insert(id, (deadline, item));
        Ok(id)
    }

    /// Remove entry `id` if still queued.
    pub fn discard(&mut self, id: u64) -> Option<T> {
        let removed = self.live.remove(&id).map(|(_, item)| item);
        if self.heap.len() > 2 * self.live.len() + 64 {
            let live = &self.live;
            self.heap.retain(|Reverse((_, id))| live.contains_key(id));
        }
        removed
    }

    /// Remove and return the first `(deadline, item)`.
    pub fn pop(&mut self) -> Option<(Option<Instant>, T)> {
        while let Some(Reverse((_, id))) = self.heap.pop() {
            if let Some(entry) = self.live.remove(&id) {
                return Some(entry);
            }
        }
        None
    }
}

/// What a waiter is told when it leaves the queue.
#[derive(Debug)]
enum Grant {
    Go,
    Expired,
}

/// Why a request was not admitted (each is a Python error: see `proxy.rs`).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The deadline had passed before the request could be queued.
    PassedBefore,
    /// The queue holds `n` waiters, its bound.
    Full(usize),
    /// The deadline passed while the request waited.
    ExpiredQueued,
}

struct Inner {
    concurrency: usize,
    in_flight: usize,
    queue: EdfQueue<oneshot::Sender<Grant>>,
}

impl Inner {
    /// Hand free slots to the earliest waiters still in time (`EdfAdmission.release`'s loop).
    fn grant(&mut self, now: Instant) {
        while self.in_flight < self.concurrency {
            let Some((deadline, waiter)) = self.queue.pop() else { return };
            if deadline.is_some_and(|at| at <= now) {
                let _ = waiter.send(Grant::Expired);
                continue;
            }
            if waiter.send(Grant::Go).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    fn release(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.grant(now);
    }
}

/// At most `concurrency` holders at once; the others wait in EDF order, at most `max_size` of them.
pub struct Admission {
    inner: Mutex<Inner>,
}

impl Admission {
    pub fn new(concurrency: usize, max_size: usize) -> Self {
        Admission {
            inner: Mutex::new(Inner { concurrency: concurrency.max(1), in_flight: 0, queue: EdfQueue::new(max_size) }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follow a new table: more slots are handed out at once, fewer are taken back as holders leave.
    pub fn resize(&self, concurrency: usize, max_size: usize) {
        let mut inner = self.lock();
        inner.concurrency = concurrency.max(1);
        inner.queue.set_max_size(max_size);
        inner.grant(Instant::now());
    }

    /// `(queue length, in flight)`.
    pub fn figures(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.queue.len(), inner.in_flight)
    }

    /// Wait for a slot in deadline order (`EdfAdmission.acquire`).
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<Permit<'_>, Refusal> {
        let (id, rx) = {
            let mut inner = self.lock();
            if deadline.is_some_and(|at| at <= Instant::now()) {
                return Err(Refusal::PassedBefore);
            }
            if inner.in_flight < inner.concurrency && inner.queue.is_empty() {
                inner.in_flight += 1;
                return Ok(Permit { admission: self });
            }
            let (tx, rx) = oneshot::channel();
            let id = inner.queue.push(deadline, tx).map_err(|QueueFull(n)| Refusal::Full(n))?;
            (id, rx)
        };
        let mut waiting = Waiting { admission: self, id, rx, armed: true };
        let told = match deadline {
            Some(at) => timeout_at(at, &mut waiting.rx).await.ok(),
            None => Some((&mut waiting.rx).await),
        };
        match told {
            Some(Ok(Grant::Go)) => {
                waiting.armed = false;
                Ok(Permit { admission: self })
            }
            Some(Ok(Grant::Expired)) | Some(Err(_)) => {
                waiting.armed = false;
                Err(Refusal::ExpiredQueued)
            }
            None => Err(Refusal::ExpiredQueued), // `waiting` leaves the queue (or gives back a late grant)
        }
    }
}

/// A queued waiter; leaving early (timeout, dropped future) takes it out of the queue.
struct Waiting<'a> {
    admission: &'a Admission,
    id: u64,
    rx: oneshot::Receiver<Grant>,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut inner = self.admission.lock();
        if inner.queue.discard(self.id).is_none() {
            // Popped already: granted a slot at the very moment it stopped waiting.
            if let Ok(Grant::Go) = self.rx.try_recv() {
                inner.release(Instant::now());
            }
        }
    }
}

/// One slot, given back on drop.
pub struct Permit<'a> {
    admission: &'a Admission,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.admission.lock().release(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn queue_orders_by_deadline_then_arrival_none_last() {
        let now = Instant::now();
        let mut queue = EdfQueue::new(10);
        queue.push(None, "none-1").unwrap();
        queue.push(Some(now + ms(900)), "late").unwrap();
        queue.push(Some(now + ms(20)), "soon-1").unwrap();
        let gone = queue.push(Some(now + ms(10)), "gone").unwrap();
        queue.push(Some(now + ms(20)), "soon-2").unwrap();
        queue.push(None, "none-2").unwrap();
        assert_eq!(queue.discard(gone), Some("gone"));
        assert_eq!(queue.discard(gone), None);
        assert_eq!(queue.len(), 5);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop().map(|(_, item)| item)).collect();
        assert_eq!(order, ["soon-1", "soon-2", "late", "none-1", "none-2"]);
    }

    #[test]
    fn queue_is_bounded() {
        let mut queue = EdfQueue::new(2);
        queue.push(None, 1).unwrap();
        let second = queue.push(None, 2).unwrap();
        assert_eq!(queue.push(None, 3), Err(QueueFull(2)));
        queue.discard(second);
        queue.push(None, 3).unwrap();
        queue.set_max_size(1);
        assert_eq!(queue.len(), 2); // nobody waiting is dropped
        assert_eq!(queue.push(None, 4), Err(QueueFull(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn admits_at_once_then_queues_in_deadline_order() {
        let adm = Admission::new(1, 10);
        let now = Instant::now();
        let held = adm.acquire(Some(now + ms(1000))).await.unwrap();
        let order = std::sync::Mutex::new(Vec::new());
        let waiter = |name: &'static str, deadline: Option<Instant>| {
            let (adm, order) = (&adm, &order);
            async move {
                let permit = adm.acquire(deadline).await;
                order.lock().unwrap().push((name, permit.is_ok()));
                tokio::time::sleep(ms(1)).await; // hold the slot a moment
            }
        };
        let release = async {
            tokio::time::sleep(ms(5)).await;
            assert_eq!(adm.figures(), (3, 1));
            drop(held);
        };
        tokio::join!(
            waiter("late", Some(now + ms(500))),
            waiter("none", None),
            waiter("soon", Some(now + ms(100))),
            release
        );
        assert_eq!(*order.lock().unwrap(), [("soon", true), ("late", true), ("none", true)]);
        assert_eq!(adm.figures(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_when_full_or_passed() {
        let adm = Admission::new(1, 1);
        let now = Instant::now();
        assert_eq!(adm.acquire(Some(now)).await.err(), Some(Refusal::PassedBefore));
        let _held = adm.acquire(None).await.unwrap();
        let queued = adm.acquire(None);
        tokio::pin!(queued);
        assert!(futures_poll(queued.as_mut()).is_none());
        assert_eq!(adm.acquire(None).await.err(), Some(Refusal::Full(1)));
        assert_eq!(adm.figures(), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_expires_and_a_release_skips_the_expired() {
        let adm = Admission::new(1, 10);
        let now = Instant::now();
        let held = adm.acquire(None).await.unwrap();
        let short = adm.acquire(Some(now + ms(50)));
        let long = async {
            let permit = adm.acquire(Some(now + ms(500))).await;
            (permit.is_ok(), Instant::now() - now)
        };
        let release = async {
            tokio::time::sleep(ms(200)).await;
            drop(held);
        };
        let (short, long, ()) = tokio::join!(short, long, release);
        assert_eq!(short.err(), Some(Refusal::ExpiredQueued));
        assert_eq!(long, (true, ms(200)));
        assert_eq!(adm.figures(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_the_queue() {
        let adm = Admission::new(1, 10);
        let held = adm.acquire(None).await.unwrap();
        {
            let gone = adm.acquire(None);
            tokio::pin!(gone);
            assert!(futures_poll(gone.as_mut()).is_none());
            assert_eq!(adm.figures(), (1, 1));
        }
        assert_eq!(adm.figures(), (0, 1));
        drop(held);
        assert_eq!(adm.figures(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn resizing_hands_out_new_slots_and_keeps_waiters() {
        let adm = Admission::new(1, 10);
        let held = adm.acquire(None).await.unwrap();
        let waiting = adm.acquire(None);
        tokio::pin!(waiting);
        assert!(futures_poll(waiting.as_mut()).is_none());
        adm.resize(2, 1);
        let second = waiting.await.unwrap();
        assert_eq!(adm.figures(), (0, 2));
        adm.resize(1, 1);
        drop(held); // one holder left: the new bound
        assert_eq!(adm.figures(), (0, 1));
        drop(second);
        assert_eq!(adm.figures(), (0, 0));
    }

    /// Poll a future once.
    fn futures_poll<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match f.poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}
