//! The context every engine and driver needs, in a leaf module: what the
//! user configured (handler, framing, hooks, limits, timeouts, drain) and
//! the server's shared stop state and tracker. Engines take it; nothing
//! here knows about engines, so no module imports its way back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::addr::Address;
use crate::config::{DatagramPolicy, DrainPolicy, Limits, Timeouts};
use crate::frame::Framing;
use crate::handler::{Handler, MessageHandler};
use crate::hooks::Hooks;
use crate::pipeline::{Admission, Conn, Ctx, Session, Settings};
use crate::shutdown::Shared;
use crate::socket::SocketOptions;

/// Everything the engines need, shared read-only.
pub(crate) struct Context {
    pub(crate) handler: Handler,
    pub(crate) framing: Framing,
    pub(crate) hooks: Hooks,
    pub(crate) limits: Limits,
    pub(crate) timeouts: Timeouts,
    pub(crate) drain: DrainPolicy,
    pub(crate) datagrams: DatagramPolicy,
    pub(crate) options: SocketOptions,
    /// Every connection starts with a PROXY header of these versions.
    pub(crate) proxy: Option<crate::proxy::Versions>,
    /// The balancers allowed to send a PROXY header (empty: any address).
    pub(crate) proxy_from: Vec<crate::rules::IpNet>,
    /// The access rules (replaceable while serving) and the rate limit.
    pub(crate) access: crate::rules::Access,
    pub(crate) shared: Arc<Shared>,
}

impl Context {
    /// The per-connection settings of the pipeline.
    pub(crate) fn settings(&self) -> Settings {
        Settings {
            idle: self.timeouts.idle.map(bounded),
            read: self.timeouts.read.map(bounded),
            write: self.timeouts.write.map(bounded),
            linger: bounded(self.drain.linger),
            max_backlog: self.limits.max_backlog.max(1),
        }
    }

    /// The message handler, if that is the kind this server runs.
    pub(crate) fn message_handler(&self) -> Option<&dyn MessageHandler> {
        match &self.handler {
            Handler::Message(h) => Some(&**h),
            _ => None,
        }
    }

    /// What the pipeline needs to call the handler.
    pub(crate) fn ctx<'a>(&'a self, handler: &'a dyn MessageHandler) -> Ctx<'a> {
        Ctx {
            handler,
            hooks: &self.hooks,
        }
    }

    /// A new framed connection's pipeline (from listener `listener`).
    pub(crate) fn new_conn(&self, peer: Address, listener: usize, now: Instant) -> Conn {
        let mut session = Session::new(&self.framing, peer);
        if let Some(meters) = self.shared.tracker.meters() {
            if meters.timing.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(m) = meters.listener(listener) {
                    session.time_into(std::sync::Arc::clone(m));
                }
            }
        }
        let mut layers: Vec<Box<dyn crate::pipeline::layer::Layer>> = Vec::new();
        if let Some(v) = self.proxy {
            layers.push(Box::new(crate::proxy::ProxyLayer::new(v, now)));
        }
        Conn::new(
            session,
            layers,
            self.settings(),
            now,
            self.shared.stop.is_stopping(),
        )
    }
}

impl Context {
    /// A framed connection read its PROXY header ([`Next::Admit`]): the
    /// client it names through the gate ([`crate::accept::after_header`]),
    /// the verdict back to the pipeline. Both drivers call this.
    ///
    /// [`Next::Admit`]: crate::pipeline::Next::Admit
    pub(crate) fn admit(
        &self,
        conn: &mut Conn,
        guard: &mut crate::tracker::TrackGuard,
        now: Instant,
    ) {
        let (Some(header), Some(proxy)) = (conn.take_header(), conn.peer().cloned()) else {
            return;
        };
        let verdict = match crate::accept::after_header(self, guard, &proxy, header) {
            Ok(client) => Admission::Client(client.peer, client.proxy),
            Err(why) => Admission::Refused(
                why,
                crate::accept::sends_message(why)
                    .then(|| self.limits.limit_message.clone())
                    .flatten(),
            ),
        };
        conn.admit(verdict, now);
    }
}

/// A duration a clock can add without overflowing: at most a year (any
/// longer timeout means "never" in practice).
pub(crate) fn bounded(d: Duration) -> Duration {
    d.min(Duration::from_secs(365 * 24 * 3600))
}
