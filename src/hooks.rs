//! The server's hooks, Python's overridable methods as values:
//! `verify_request`, `handle_error`, `handle_timeout`, `service_actions`.
//! Each is a small function with one job, set on the builder.

use std::fmt;
use std::sync::Arc;

use crate::addr::Address;
use crate::frame::FrameError;

/// Any error a handler returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Something that went wrong while serving one peer.
#[derive(Debug)]
pub enum Failure {
    /// The handler returned an error.
    Handler(BoxError),
    /// The handler panicked; the payload's message if it had one.
    Panic(String),
    /// The peer broke the framing (an oversized or corrupt frame).
    Frame(FrameError),
    /// The connection failed (reset, timed out, ...).
    Io(std::io::Error),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Handler(e) => write!(f, "handler error: {e}"),
            Failure::Panic(msg) => write!(f, "handler panicked: {msg}"),
            Failure::Frame(e) => write!(f, "bad frame: {e}"),
            Failure::Io(e) => write!(f, "connection error: {}", crate::error::describe(e)),
        }
    }
}

impl Failure {
    pub(crate) fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Failure {
        let msg = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_string()
        };
        Failure::Panic(msg)
    }
}

pub(crate) type VerifyFn = Arc<dyn Fn(&Address) -> bool + Send + Sync>;
pub(crate) type ErrorFn = Arc<dyn Fn(&Address, &Failure) + Send + Sync>;
pub(crate) type ActionFn = Arc<dyn Fn() + Send + Sync>;

/// The hooks of one server; the builder fills them in.
#[derive(Clone)]
pub(crate) struct Hooks {
    pub(crate) verify_request: Option<VerifyFn>,
    pub(crate) handle_error: ErrorFn,
    pub(crate) handle_timeout: Option<ActionFn>,
    pub(crate) service_actions: Option<ActionFn>,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            verify_request: None,
            handle_error: Arc::new(default_handle_error),
            handle_timeout: None,
            service_actions: None,
        }
    }
}

/// Python prints a traceback; a server logs one line and keeps serving.
fn default_handle_error(peer: &Address, failure: &Failure) {
    match failure {
        // A peer that resets or times out is routine, not an error.
        Failure::Io(_) => tracing::debug!(%peer, "{failure}"),
        Failure::Frame(_) => tracing::info!(%peer, "{failure}"),
        _ => tracing::warn!(%peer, "{failure}"),
    }
}

impl Hooks {
    /// `verify_request`; one that panics refuses the peer (and the panic
    /// is reported), it never unwinds through the server.
    #[inline]
    pub(crate) fn verify(&self, peer: &Address) -> bool {
        match &self.verify_request {
            Some(f) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(peer))) {
                Ok(ok) => ok,
                Err(p) => {
                    self.error(peer, Failure::from_panic(p));
                    false
                }
            },
            None => true,
        }
    }

    /// `handle_error`; one that panics is logged, never unwinds through the
    /// server.
    #[inline]
    pub(crate) fn error(&self, peer: &Address, failure: Failure) {
        let hook = std::panic::AssertUnwindSafe(|| (self.handle_error)(peer, &failure));
        if std::panic::catch_unwind(hook).is_err() {
            tracing::error!(%peer, "the handle_error hook panicked (on: {failure})");
        }
    }
}
