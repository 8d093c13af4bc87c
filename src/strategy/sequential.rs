//! Sequential: every connection runs to completion on the serving thread
//! before the next is accepted — Python's plain `TCPServer`.

use std::sync::Arc;

use super::{Engine, Work};
use crate::run;
use crate::server::Config;

pub(crate) struct Sequential {
    config: Arc<Config>,
}

impl Sequential {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Sequential { config }
    }
}

impl Engine for Sequential {
    fn dispatch(&self, work: Work) {
        run::run_work(work, &self.config);
    }
}
