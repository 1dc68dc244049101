//! What one proxied request does after each attempt on a backend, for both
//! client protocols: try another backend, send it again, or answer. Which
//! outcomes count against the backend is decided here and only here. Pure:
//! outcomes in, decisions out; the I/O sides (`h1`, `h2`) carry them
//! out. Also the access-log record both sides fill in.

use std::net::SocketAddr;
use std::time::Instant;

use tracing::info;

/// An answer made by the proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAnswer {
    /// Status code.
    pub status: u16,
    /// Its reason phrase (HTTP/1).
    pub reason: &'static str,
    /// The short body.
    pub text: &'static str,
}

impl LocalAnswer {
    const fn new(status: u16, reason: &'static str, text: &'static str) -> Self {
        LocalAnswer { status, reason, text }
    }
}

/// No backend could be picked (all down, ejected or tried).
pub const NO_BACKEND: LocalAnswer = LocalAnswer::new(503, "Service Unavailable", "no healthy backend\n");
/// Every backend tried refused or timed out the connection.
pub const UNREACHABLE: LocalAnswer = LocalAnswer::new(502, "Bad Gateway", "no backend reachable\n");
/// The connection ended before a response came.
pub const CONNECTION_FAILED: LocalAnswer = LocalAnswer::new(502, "Bad Gateway", "backend connection failed\n");
/// The response head was not valid HTTP, or too large.
pub const BAD_RESPONSE: LocalAnswer = LocalAnswer::new(502, "Bad Gateway", "invalid response from backend\n");
/// No response head within `response_timeout`.
pub const TIMED_OUT: LocalAnswer = LocalAnswer::new(504, "Gateway Timeout", "backend timed out\n");
/// The backend picked stayed at `max_conns` for the whole `queue_timeout`.
pub const QUEUE_TIMEOUT: LocalAnswer = LocalAnswer::new(503, "Service Unavailable", "backends busy: queue timed out\n");

/// How one attempt on one backend ended, as far as the retry rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection could be made: nothing was sent.
    Unreachable,
    /// The connection ended before any byte of a response. `reused`: it
    /// came from the pool, so the backend may simply have closed it as the
    /// request went out, which is not the backend's fault.
    NoAnswer {
        /// The connection had served a request before.
        reused: bool,
    },
    /// The response head was not valid HTTP, or too large.
    BadResponse,
    /// No response head within `response_timeout`.
    TimedOut,
    /// A response head came and was passed on.
    Answered {
        /// Its status.
        status: u16,
    },
}

/// What an outcome says of the backend's health (its eject streak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Counts as a failure.
    Failed,
    /// Ends a failure streak.
    Succeeded,
    /// Says nothing about it.
    Neither,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Start another attempt (`Attempts::tried` says where not to go).
    Retry,
    /// Answer the client with this.
    Answer(LocalAnswer),
    /// The response is the client's; nothing more to try.
    Done,
}

/// The backends one request has tried, without allocating.
#[derive(Debug, Default)]
struct Tried {
    list: [usize; MAX_TRIED],
    len: usize,
}

/// 1 + the largest `retries`, plus the one stale-connection retry.
const MAX_TRIED: usize = 12;

impl Tried {
    fn push(&mut self, i: usize) {
        if let Some(slot) = self.list.get_mut(self.len) {
            *slot = i;
            self.len += 1;
        }
    }

    fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    fn as_slice(&self) -> &[usize] {
        &self.list[..self.len]
    }
}

/// The attempts of one request.
#[derive(Debug)]
pub struct Attempts {
    tried: Tried,
    /// 1 + `retries`.
    max: usize,
    made: usize,
    /// Idempotent and bodiless: it may be sent again after it was sent.
    replayable: bool,
    /// The one free retry after a pooled connection closed under it.
    stale_retried: bool,
    /// The one resend after a connection broke under it.
    replayed: bool,
    /// The answer if attempts run out.
    failure: LocalAnswer,
}

impl Attempts {
    /// For a request allowed `retries` more attempts after the first.
    /// `replayable`: idempotent (RFC 9110 §9.2.2) with no body, so it can
    /// be sent a second time after a connection broke under it.
    pub fn new(retries: u32, replayable: bool) -> Self {
        Attempts {
            tried: Tried::default(),
            max: 1 + usize::try_from(retries).unwrap_or(usize::MAX).min(MAX_TRIED - 2),
            made: 0,
            replayable,
            stale_retried: false,
            replayed: false,
            failure: NO_BACKEND,
        }
    }

    /// Backends not to pick for the next attempt.
    pub fn tried(&self) -> &[usize] {
        self.tried.as_slice()
    }

    /// Another attempt may start.
    pub fn may_start(&self) -> bool {
        self.made < self.max
    }

    /// An attempt on backend `i` starts. Returns whether it is a retry.
    pub fn start(&mut self, i: usize) -> bool {
        self.made += 1;
        self.tried.push(i);
        self.made > 1
    }

    /// Whether this attempt may go on a pooled connection. Only what can be
    /// sent again may: a pooled connection the backend closes just as the
    /// request goes out fails it, and a request with a body or a side
    /// effect has no way back (HAProxy's `http-reuse safe` for the same
    /// reason). The rest go on a fresh connection.
    pub fn may_reuse(&self) -> bool {
        self.replayable
    }

    /// The answer when no attempt (or no further one) can be made.
    pub fn exhausted(&self) -> LocalAnswer {
        self.failure
    }

    /// Takes in how the attempt just started ended.
    pub fn end(&mut self, outcome: Outcome) -> (Blame, Then) {
        let (blame, then) = match outcome {
            Outcome::Answered { status } => {
                // 501 and 505 answer the client's method or version, not a
                // failing backend.
                let failing = status >= 500 && status != 501 && status != 505;
                return (if failing { Blame::Failed } else { Blame::Succeeded }, Then::Done);
            }
            // Nothing was sent: any request may go to another backend.
            Outcome::Unreachable => {
                self.failure = UNREACHABLE;
                (Blame::Failed, Then::Retry)
            }
            Outcome::NoAnswer { reused: true } if self.replayable && !self.stale_retried => {
                // Once, free of charge and to any backend, the same one too.
                self.stale_retried = true;
                self.made -= 1;
                self.tried.pop();
                (Blame::Neither, Then::Retry)
            }
            Outcome::NoAnswer { reused } => {
                self.failure = CONNECTION_FAILED;
                let blame = if reused { Blame::Neither } else { Blame::Failed };
                if self.replayable && !self.replayed {
                    self.replayed = true;
                    (blame, Then::Retry)
                } else {
                    (blame, Then::Answer(CONNECTION_FAILED))
                }
            }
            Outcome::BadResponse => (Blame::Failed, Then::Answer(BAD_RESPONSE)),
            Outcome::TimedOut => (Blame::Failed, Then::Answer(TIMED_OUT)),
        };
        match then {
            Then::Retry if !self.may_start() => (blame, Then::Answer(self.failure)),
            other => (blame, other),
        }
    }
}

/// Facts for the access-log line, collected only when it is enabled.
#[derive(Debug)]
pub struct AccessLog {
    /// Client address.
    pub client: SocketAddr,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// Backend that answered, if any.
    pub backend: Option<SocketAddr>,
    /// When the request arrived.
    pub started: Instant,
    /// Its `X-Request-Id`, as the backend got it.
    pub request_id: String,
}

impl AccessLog {
    /// Writes the line: `bytes` of response body sent, `complete` if all.
    pub fn emit(&self, bytes: u64, complete: bool) {
        info!(
            target: "access",
            client = %self.client,
            method = %self.method,
            path = %self.path,
            status = self.status,
            backend = %self.backend.map_or_else(|| "-".to_string(), |b| b.to_string()),
            bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            complete,
            request_id = %self.request_id,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Then = Then::Retry;

    #[test]
    fn an_answer_ends_it_and_only_server_errors_of_the_backends_own_blame_it() {
        for (status, blame) in [
            (200, Blame::Succeeded),
            (404, Blame::Succeeded),
            (500, Blame::Failed),
            (501, Blame::Succeeded),
            (502, Blame::Failed),
            (503, Blame::Failed),
            (505, Blame::Succeeded),
        ] {
            let mut a = Attempts::new(3, true);
            a.start(0);
            assert_eq!(a.end(Outcome::Answered { status }), (blame, Then::Done), "status {status}");
        }
    }

    #[test]
    fn an_unreachable_backend_is_blamed_and_another_tried_while_retries_last() {
        let mut a = Attempts::new(2, false);
        assert!(!a.start(4), "the first attempt is no retry");
        assert_eq!(a.end(Outcome::Unreachable), (Blame::Failed, RETRY));
        assert!(a.start(5));
        assert_eq!(a.end(Outcome::Unreachable), (Blame::Failed, RETRY));
        assert_eq!(a.tried(), &[4, 5]);
        assert!(a.start(6));
        assert_eq!(a.end(Outcome::Unreachable), (Blame::Failed, Then::Answer(UNREACHABLE)));
        assert!(!a.may_start());
        assert_eq!(a.exhausted(), UNREACHABLE);
    }

    #[test]
    fn no_backend_at_all_is_a_503_and_after_failures_the_last_failure() {
        assert_eq!(Attempts::new(1, true).exhausted(), NO_BACKEND);
        let mut a = Attempts::new(1, true);
        a.start(0);
        a.end(Outcome::Unreachable);
        assert_eq!(a.exhausted(), UNREACHABLE, "the other backend could not be picked");
    }

    #[test]
    fn a_stale_pooled_connection_costs_one_free_retry_of_a_replayable_request() {
        let mut a = Attempts::new(0, true);
        a.start(1);
        assert_eq!(a.end(Outcome::NoAnswer { reused: true }), (Blame::Neither, RETRY));
        assert!(a.tried().is_empty(), "the same backend may be picked again");
        assert!(a.may_start(), "it did not use up the attempt");
        a.start(1);
        // A second stale connection: the replay, not free, and with no
        // retries left it is answered.
        assert_eq!(a.end(Outcome::NoAnswer { reused: true }), (Blame::Neither, Then::Answer(CONNECTION_FAILED)));
    }

    #[test]
    fn a_broken_fresh_connection_blames_the_backend_and_replays_once_what_can_be() {
        let mut a = Attempts::new(3, true);
        a.start(0);
        assert_eq!(a.end(Outcome::NoAnswer { reused: false }), (Blame::Failed, RETRY));
        a.start(1);
        assert_eq!(a.end(Outcome::NoAnswer { reused: false }), (Blame::Failed, Then::Answer(CONNECTION_FAILED)));

        // A POST, or a request with a body, is never sent twice.
        let mut post = Attempts::new(3, false);
        assert!(!post.may_reuse(), "it goes on a fresh connection");
        post.start(0);
        assert_eq!(post.end(Outcome::NoAnswer { reused: false }), (Blame::Failed, Then::Answer(CONNECTION_FAILED)));
        // Had it been on a pooled one, the backend would not be blamed.
        let mut post = Attempts::new(3, false);
        post.start(0);
        assert_eq!(post.end(Outcome::NoAnswer { reused: true }), (Blame::Neither, Then::Answer(CONNECTION_FAILED)));
    }

    #[test]
    fn bad_responses_and_timeouts_are_answered_at_once_and_blame_the_backend() {
        for (outcome, answer) in [(Outcome::BadResponse, BAD_RESPONSE), (Outcome::TimedOut, TIMED_OUT)] {
            let mut a = Attempts::new(5, true);
            a.start(0);
            assert_eq!(a.end(outcome), (Blame::Failed, Then::Answer(answer)));
        }
    }

    #[test]
    fn only_replayable_requests_take_pooled_connections() {
        assert!(Attempts::new(0, true).may_reuse());
        assert!(!Attempts::new(0, false).may_reuse());
    }

    #[test]
    fn retries_are_bounded_by_what_the_tried_list_holds() {
        let mut a = Attempts::new(u32::MAX, false);
        let mut n = 0;
        while a.may_start() {
            a.start(n);
            n += 1;
            if let (_, Then::Answer(_)) = a.end(Outcome::Unreachable) {
                break;
            }
        }
        assert_eq!(n, MAX_TRIED - 1);
        assert_eq!(a.tried().len(), MAX_TRIED - 1);
    }
}
