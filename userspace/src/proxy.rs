//! Listeners and sessions: accept intercepted connections, resolve who is calling and where
//! they meant to go, and hand each session to its protocol handler.

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::policy::Engine;

/// State shared by every session; swapped atomically on reload.
#[derive(Debug)]
pub struct Context {
    pub config: ArcSwap<Config>,
    pub engine: ArcSwap<Engine>,
}
