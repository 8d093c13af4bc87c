//! Async stream handlers under the event-loop strategy: the user's async
//! code owns its connection's I/O, so it runs on a tokio runtime (work
//! stealing, `loops` threads) and the server only hands it connections.

use std::sync::Arc;

use crate::context::Context;
use crate::handler::Handler;
use crate::run::Work;

pub(crate) struct TokioEngine {
    rt: std::sync::Mutex<Option<tokio::runtime::Runtime>>,
}

impl TokioEngine {
    pub(crate) fn new(threads: usize) -> std::io::Result<TokioEngine> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("sockserv-async")
            .on_thread_start(crate::shutdown::mark_server_thread)
            .enable_all()
            .build()?;
        Ok(TokioEngine {
            rt: std::sync::Mutex::new(Some(rt)),
        })
    }

    pub(crate) fn dispatch(&self, work: Work, ctx: &Arc<Context>) {
        let (Work::Conn(conn), Handler::AsyncStream(h)) = (work, &ctx.handler) else {
            return;
        };
        let h = Arc::clone(h);
        let ctx = Arc::clone(ctx);
        if let Some(rt) = &*self.rt.lock().unwrap_or_else(|p| p.into_inner()) {
            rt.spawn(async move { crate::run::serve_async(conn, &*h, &ctx).await });
        }
    }

    /// Handlers that ignore their cut sockets must not hold the server's
    /// shutdown: the runtime is left to finish in the background.
    pub(crate) fn stop(&self) {
        if let Some(rt) = self.rt.lock().unwrap_or_else(|p| p.into_inner()).take() {
            rt.shutdown_background();
        }
    }
}
