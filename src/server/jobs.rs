//! The job table and the bounded FIFO between the HTTP handlers and the engine's worker thread. Handlers submit,
//! read and cancel; the worker takes the next job and reports events and the result. Every job ends in exactly
//! one terminal state (done, failed or cancelled), which is what lets shutdown answer every request.

use super::spec::Built;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl State {
    pub fn terminal(self) -> bool {
        matches!(self, State::Done | State::Failed | State::Cancelled)
    }
}

/// One progress event as clients see it (SSE `event:` name and JSON data).
#[derive(Debug, Clone, Serialize)]
pub struct JobEvent {
    #[serde(skip)]
    pub name: &'static str,
    #[serde(flatten)]
    pub data: serde_json::Value,
}

pub struct Job {
    pub state: State,
    /// Taken by the worker when the job starts.
    pub built: Option<Built>,
    /// Kept until the job ends: the uploads live there.
    pub dir: Option<tempfile::TempDir>,
    pub events: Vec<JobEvent>,
    pub png: Option<Arc<Vec<u8>>>,
    pub seed: Option<u64>,
    pub error: Option<String>,
    pub cancel: Arc<AtomicBool>,
    /// Bumped on every change: SSE streams and waiting handlers wake on it.
    pub changed: watch::Sender<u64>,
    /// (done, total) denoising steps.
    pub step: (usize, usize),
}

#[derive(Default)]
pub struct Metrics {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub cancelled: AtomicU64,
    pub rejected: AtomicU64,
    pub steps: AtomicU64,
    /// Denoising time, microseconds, over `steps`.
    pub step_micros: AtomicU64,
    /// Largest host peak RSS reported by a job, KiB.
    pub peak_rss_kib: AtomicU64,
    /// Wall time of finished jobs, milliseconds (for Retry-After).
    pub job_millis: AtomicU64,
    /// Models loaded now (0 or 1).
    pub loaded: AtomicU64,
    /// Models unloaded after the idle time.
    pub idle_unloads: AtomicU64,
}

/// What the worker gets from the queue.
pub enum Next {
    Job(String, Box<Built>, Arc<AtomicBool>),
    /// No job came within the idle time.
    Idle,
    /// The hub closed and emptied.
    Closed,
}

pub struct Hub {
    jobs: Mutex<HashMap<String, Job>>,
    queue: Mutex<VecDeque<String>>,
    wake: Condvar,
    pub max_queue: usize,
    pub metrics: Metrics,
    /// No new jobs; the worker stops once the queue is empty.
    pub closing: AtomicBool,
    /// The job the worker runs now.
    pub running: Mutex<Option<String>>,
    next: AtomicU64,
    salt: u64,
}

/// Why a job was not queued.
pub enum Rejected {
    Full { retry_after: u64 },
    Closing,
}

impl Hub {
    pub fn new(max_queue: usize) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let salt = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Hub {
            jobs: Mutex::new(HashMap::new()),
            queue: Mutex::new(VecDeque::new()),
            wake: Condvar::new(),
            max_queue,
            metrics: Metrics::default(),
            closing: AtomicBool::new(false),
            running: Mutex::new(None),
            next: AtomicU64::new(1),
            salt,
        }
    }

    /// An id nobody can guess from another job's.
    fn new_id(&self) -> String {
        use std::hash::{BuildHasher, Hasher};
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n ^ self.salt);
        format!("{n:x}-{:016x}", h.finish())
    }

    pub fn queue_len(&self) -> usize {
        self.queue.lock().unwrap().len()
    }

    /// Queues a checked job at the back; refused when the queue is full or the server is closing.
    pub fn submit(&self, built: Built, dir: tempfile::TempDir) -> Result<String, Rejected> {
        let mut queue = self.queue.lock().unwrap();
        if self.closing.load(Ordering::SeqCst) {
            return Err(Rejected::Closing);
        }
        if queue.len() >= self.max_queue {
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(Rejected::Full { retry_after: self.retry_after(queue.len()) });
        }
        let id = self.new_id();
        let job = Job {
            state: State::Queued,
            built: Some(built),
            dir: Some(dir),
            events: vec![JobEvent { name: "stage", data: serde_json::json!({"stage": "queued"}) }],
            png: None,
            seed: None,
            error: None,
            cancel: Arc::new(AtomicBool::new(false)),
            changed: watch::channel(0).0,
            step: (0, 0),
        };
        self.jobs.lock().unwrap().insert(id.clone(), job);
        queue.push_back(id.clone());
        self.wake.notify_all();
        Ok(id)
    }

    /// Seconds until a place is likely free: the mean job time so far times the jobs ahead (at least 1).
    pub fn retry_after(&self, ahead: usize) -> u64 {
        let done = self.metrics.done.load(Ordering::Relaxed).max(1);
        let mean_ms = self.metrics.job_millis.load(Ordering::Relaxed) / done;
        (mean_ms * ahead as u64 / 1000).clamp(1, 3600)
    }

    /// Blocks the worker until a job is queued (its id and checked request), the hub is closed and empty, or
    /// `idle` (when given) passed without a job.
    pub fn next_job_within(&self, idle: Option<std::time::Duration>) -> Next {
        let deadline = idle.map(|d| std::time::Instant::now() + d);
        let mut queue = self.queue.lock().unwrap();
        loop {
            while let Some(id) = queue.pop_front() {
                let mut jobs = self.jobs.lock().unwrap();
                let Some(job) = jobs.get_mut(&id).filter(|j| j.state == State::Queued) else { continue };
                job.state = State::Running;
                *self.running.lock().unwrap() = Some(id.clone());
                let built = job.built.take().expect("a queued job holds its request");
                let cancel = job.cancel.clone();
                push_event(job, "stage", serde_json::json!({"stage": "running"}));
                return Next::Job(id, Box::new(built), cancel);
            }
            if self.closing.load(Ordering::SeqCst) {
                return Next::Closed;
            }
            queue = match deadline {
                None => self.wake.wait(queue).unwrap(),
                Some(d) => {
                    let Some(left) = d.checked_duration_since(std::time::Instant::now()) else { return Next::Idle };
                    self.wake.wait_timeout(queue, left).unwrap().0
                }
            };
        }
    }

    /// Applies `f` to a job, then wakes whoever watches it.
    pub fn update<T>(&self, id: &str, f: impl FnOnce(&mut Job) -> T) -> Option<T> {
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs.get_mut(id)?;
        let out = f(job);
        job.changed.send_modify(|v| *v += 1);
        Some(out)
    }

    /// Ends a job: its final state, event and result; the uploads are removed.
    pub fn finish(&self, id: &str, state: State, png: Option<Vec<u8>>, error: Option<String>) {
        let counter = match state {
            State::Done => &self.metrics.done,
            State::Failed => &self.metrics.failed,
            _ => &self.metrics.cancelled,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.update(id, |job| {
            job.state = state;
            job.png = png.map(Arc::new);
            job.dir = None;
            job.built = None;
            let data = match &error {
                Some(e) => serde_json::json!({"stage": state, "error": e}),
                None => serde_json::json!({"stage": state}),
            };
            job.error = error;
            push_event(job, "stage", data);
        });
        let mut running = self.running.lock().unwrap();
        if running.as_deref() == Some(id) {
            *running = None;
        }
    }

    /// Cancels a queued job at once, a running one at its next step; false when the id is unknown.
    pub fn cancel(&self, id: &str) -> Option<State> {
        let state = self.update(id, |job| {
            job.cancel.store(true, Ordering::SeqCst);
            job.state
        })?;
        if state == State::Queued {
            self.queue.lock().unwrap().retain(|q| q != id);
            self.finish(id, State::Cancelled, None, Some("cancelled before it started".into()));
        }
        Some(self.with(id, |j| j.state).unwrap_or(state))
    }

    /// Reads a job.
    pub fn with<T>(&self, id: &str, f: impl FnOnce(&Job) -> T) -> Option<T> {
        self.jobs.lock().unwrap().get(id).map(f)
    }

    /// Stops taking jobs. Without `drain`, queued jobs are cancelled now and the running one at its next step;
    /// with it, the worker finishes them all first.
    pub fn close(&self, drain: bool) {
        let queued: Vec<String> = {
            let mut queue = self.queue.lock().unwrap();
            self.closing.store(true, Ordering::SeqCst);
            self.wake.notify_all();
            if drain {
                Vec::new()
            } else {
                queue.drain(..).collect()
            }
        };
        for id in queued {
            self.finish(&id, State::Cancelled, None, Some("the server is shutting down".into()));
        }
        let running = self.running.lock().unwrap().clone();
        if !drain {
            if let Some(id) = running {
                self.update(&id, |j| j.cancel.store(true, Ordering::SeqCst));
            }
        }
    }

    /// Whether every job has ended.
    pub fn idle(&self) -> bool {
        self.queue.lock().unwrap().is_empty() && self.running.lock().unwrap().is_none()
    }
}

/// Appends an event to a job's log.
pub fn push_event(job: &mut Job, name: &'static str, data: serde_json::Value) {
    job.events.push(JobEvent { name, data });
}
