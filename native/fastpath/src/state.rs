//! The process's shared state: the table in force, the admission queue, the counters, the pools.
//!
//! A table arrives validated ([`TableSpec`]) and is turned into [`Table`]: per model, its replicas (each
//! with its connection pool) and its figures. Installing one is a single pointer swap under a mutex;
//! a request takes an `Arc` of the table when it starts and keeps it to the end, so it never sees half of
//! an update. Replicas still named by the new table keep their pools, replicas no longer named are
//! dropped (their idle connections close; requests still using one finish on their own `Arc`), and the
//! per-model figures and round-robin turns survive every update (the Python pool keeps `_turn` likewise).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hyper::Uri;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::fallback::Fallback;
use crate::stats::{ModelStats, Stats};
use crate::table::{Limits, TableSpec};
use crate::upstream::Replica;

/// `close_idle` levels.
pub const IDLE_KEPT: u8 = 1;
pub const IDLE_ALL: u8 = 2;

/// One proxied model: its replicas in table order, each with the model's infer path there.
pub struct Route {
    pub name: String,
    pub replicas: Vec<(Arc<Replica>, Uri)>,
    pub stats: Arc<ModelStats>,
    turn: Arc<AtomicUsize>,
}

impl Route {
    /// Where this request tries first: the per-model turn, advanced once per request (`UpstreamPool._rotation`).
    pub fn first(&self) -> usize {
        self.turn.fetch_add(1, Relaxed) % self.replicas.len().max(1)
    }
}

/// The table in force.
pub struct Table {
    pub spec: TableSpec,
    pub routes: HashMap<String, Arc<Route>>,
}

/// Everything the listeners share.
pub struct App {
    /// The data listener's bound address (`GET /health` tells the Python side, which may have asked for port 0).
    pub listen: String,
    table: Mutex<Option<Arc<Table>>>,
    pub admission: Admission,
    pub stats: Stats,
    pub fallback: Arc<Fallback>,
    /// Open data connections and requests in progress (the `limit_concurrency` rule).
    pub connections: AtomicUsize,
    pub in_progress: AtomicUsize,
    turns: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    defaults: Limits,
    /// Set by `POST /drain` (or the process's own stop): every answer closes its connection.
    draining: AtomicBool,
    /// Which idle connections must close at once: 0 none, [`IDLE_KEPT`] those kept alive after an answer
    /// (the drain asked for it), [`IDLE_ALL`] also those that never sent a request (the process stops).
    close_idle: watch::Sender<u8>,
}

impl App {
    pub fn new(listen: String, fallback: Fallback) -> Self {
        App {
            listen,
            table: Mutex::new(None),
            admission: Admission::new(64, 1024),
            stats: Stats::default(),
            fallback: Arc::new(fallback),
            connections: AtomicUsize::new(0),
            in_progress: AtomicUsize::new(0),
            turns: Mutex::new(HashMap::new()),
            defaults: Limits::default(),
            draining: AtomicBool::new(false),
            close_idle: watch::channel(0).0,
        }
    }

    /// From now on every answer carries `Connection: close` and closes its connection, and new connections
    /// are still accepted (the router's SIGTERM drain). With `close_idle`, connections kept alive after an
    /// answer and idle now close at once too; without it they stay open, as the Python router leaves them
    /// (`http_guard.drain_connections`): a client that sends on one gets its answer with `Connection: close`
    /// instead of meeting a close under the request it just sent.
    pub fn drain(&self, close_idle: bool) {
        self.draining.store(true, Relaxed);
        if close_idle {
            self.close_idle.send_if_modified(|level| {
                let raised = *level < IDLE_KEPT;
                if raised {
                    *level = IDLE_KEPT;
                }
                raised
            });
        }
    }

    /// The process stops: the drain, and every idle connection closes at once.
    pub fn stop(&self) {
        self.draining.store(true, Relaxed);
        self.close_idle.send_replace(IDLE_ALL);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Which idle connections must close (see `close_idle`).
    pub fn close_idle_watch(&self) -> watch::Receiver<u8> {
        self.close_idle.subscribe()
    }

    /// The table in force, if one was installed.
    pub fn table(&self) -> Option<Arc<Table>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The client limits in force (the router's defaults before the first table).
    pub fn limits(&self) -> Limits {
        self.table().map_or_else(|| self.defaults.clone(), |t| t.spec.limits.clone())
    }

    /// The client limits of `table`, or the router's defaults without one.
    pub fn limits_of<'a>(&'a self, table: Option<&'a Arc<Table>>) -> &'a Limits {
        table.map_or(&self.defaults, |t| &t.spec.limits)
    }

    /// Build the runtime table of `spec` (reusing pools, figures and turns) and swap it in.
    pub fn install(&self, spec: TableSpec) {
        let old = self.table();
        let mut pools: HashMap<String, Arc<Replica>> = HashMap::new();
        if let Some(old) = &old {
            for route in old.routes.values() {
                for (replica, _) in &route.replicas {
                    pools.entry(replica.base.text.clone()).or_insert_with(|| replica.clone());
                }
            }
        }
        let mut routes = HashMap::with_capacity(spec.models.len());
        {
            let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
            for (model, bases) in &spec.models {
                let replicas = bases
                    .iter()
                    .map(|base| {
                        let replica =
                            pools.entry(base.text.clone()).or_insert_with(|| Arc::new(Replica::new(base.clone())));
                        let path = format!("{}/v2/models/{model}/infer", base.prefix);
                        (replica.clone(), path.parse::<Uri>().unwrap_or_else(|_| Uri::from_static("/")))
                    })
                    .collect();
                let route = Route {
                    name: model.clone(),
                    replicas,
                    stats: self.stats.model(model),
                    turn: turns.entry(model.clone()).or_default().clone(),
                };
                routes.insert(model.clone(), Arc::new(route));
            }
        }
        self.admission.resize(spec.queue_concurrency, spec.queue_max_size);
        let table = Arc::new(Table { spec, routes });
        *self.table.lock().unwrap_or_else(|e| e.into_inner()) = Some(table);
    }
}
