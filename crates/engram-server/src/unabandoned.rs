//! A commit that runs to its end even when its request is abandoned.
//!
//! hyper drops a request's handler future when the client disconnects. A commit awaited with
//! `Transaction::commit_async` is in the log from its first poll on, but it is made visible by
//! the task that awaits it: dropped there, it would become durable yet stay invisible to every
//! snapshot until some later commit applies it. [`Unabandoned`] hands such a commit, if dropped
//! half-way, to a task of its own that finishes it, as the blocking pool used to by simply
//! running on. A commit never polled is dropped (nothing was logged).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct Unabandoned<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    /// Boxed so that, once polled (pinned), it can still move to another task.
    future: Option<Pin<Box<F>>>,
    polled: bool,
}

impl<F: Future + Send + 'static> Unabandoned<F>
where
    F::Output: Send + 'static,
{
    pub fn new(future: F) -> Self {
        Unabandoned {
            future: Some(Box::pin(future)),
            polled: false,
        }
    }
}

impl<F: Future + Send + 'static> Future for Unabandoned<F>
where
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.polled = true;
        let future = this.future.as_mut().expect("Unabandoned polled after it completed");
        let output = std::task::ready!(future.as_mut().poll(cx));
        this.future = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for Unabandoned<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        let Some(future) = self.future.take() else { return };
        if !self.polled {
            return;
        }
        // Outside a runtime (it is being shut down) there is nowhere to finish: the commit, if
        // logged, is durable with the next group or the shutdown's sync, and recovery replays it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = future.await;
            });
        }
    }
}
