//! Where requests live. Every state change is a read-modify-write under the store's own lock
//! or transaction, applying the pure rules of [`super::model`]; after it commits, every
//! instance sharing the store hears the request id on [`Store::subscribe`].

use std::future::Future;
use std::pin::Pin;

use tokio::sync::broadcast;

use super::ApprovalError;
use super::model::{ApprovalRequest, Transition};

/// A boxed future returned by store operations (the trait is used as `dyn Store`).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApprovalError>> + Send + 'a>>;

/// A change applied inside [`Store::update`]: `Ok(Some(t))` writes the request back and
/// notifies watchers, `Ok(None)` leaves it unchanged, an error aborts.
pub type Change<'a> =
    Box<dyn FnOnce(&mut ApprovalRequest) -> Result<Option<Transition>, ApprovalError> + Send + 'a>;

/// What watchers hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// This request changed (here or on another instance).
    Changed(String),
    /// The store cannot be reached; held commands must be refused.
    Down(String),
}

/// Durable storage of approval requests.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Adds a new request.
    fn insert<'a>(&'a self, req: &'a ApprovalRequest) -> StoreFuture<'a, ()>;
    /// One request by id.
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<ApprovalRequest>>;
    /// Requests, newest first; only pending ones when asked.
    fn list(&self, pending_only: bool, limit: u32) -> StoreFuture<'_, Vec<ApprovalRequest>>;
    /// Applies `change` atomically and notifies watchers when it wrote.
    fn update<'a>(
        &'a self,
        id: &'a str,
        change: Change<'a>,
    ) -> StoreFuture<'a, (ApprovalRequest, Option<Transition>)>;
    /// Approved requests of this subject and target that may cover a command, oldest first.
    fn grants<'a>(
        &'a self,
        subject: &'a str,
        target: &'a str,
    ) -> StoreFuture<'a, Vec<ApprovalRequest>>;
    /// Pending requests.
    fn count_pending(&self) -> StoreFuture<'_, i64>;
    /// Change notifications for every request.
    fn subscribe(&self) -> broadcast::Receiver<StoreEvent>;
    /// Whether the store answered its last operation or notification check.
    fn is_up(&self) -> bool;
}
