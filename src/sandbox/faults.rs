//! Bad moments the simulators can be told to have, so tests see what the server does when a vendor
//! fails: an error status, a request that is never answered, or one carried out whose answer is lost.
//!
//! Each fault is used up by one request, in the order they were queued; with none queued the
//! simulators behave.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

/// One request's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this HTTP status with the vendor's error body, having done nothing.
    Status(u16),
    /// Never answer (the client's time-out), having done nothing.
    Hang,
    /// Do what was asked, then never answer: the client cannot tell it was done.
    HangAfter,
}

/// The faults still to inject, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Faults(Mutex<VecDeque<Fault>>);

impl Faults {
    pub(crate) fn push(&self, times: usize, fault: Fault) {
        self.lock().extend(std::iter::repeat_n(fault, times));
    }

    /// The next request's fault, if any is queued.
    pub(crate) fn take(&self) -> Option<Fault> {
        self.lock().pop_front()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Fault>> {
        // Plain data, updated in one step: a panic elsewhere leaves it usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
