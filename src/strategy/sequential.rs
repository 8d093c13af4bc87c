//! Sequential: every connection runs to completion on the serving thread
//! before the next is accepted — Python's plain `TCPServer`.

use std::sync::Arc;

use crate::context::Context;
use crate::run;
use crate::run::Work;

#[derive(Default)]
pub(crate) struct Sequential;

impl Sequential {
    pub(crate) fn dispatch(&self, work: Work, ctx: &Arc<Context>) {
        run::run_work(work, ctx);
    }
}
