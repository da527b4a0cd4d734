//! The two directions of a session in one task, each polled only when its
//! own waker fired.
//!
//! `tokio::select!` polls every branch whenever the task wakes: a reply
//! from the database would also poll the client side's pending read (the
//! cooperative budget, a readiness check, a lock of the socket's waker
//! list), and a client request the upstream side's. Here each branch gets
//! a waker of its own that marks the branch before it wakes the task, and
//! a wake-up polls only the marked branches. Owns: that bookkeeping. Must
//! never: lose a wake-up (a branch is marked before the task is woken, and
//! the task's waker is registered before the marks are taken).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

const FIRST: u8 = 1;
const SECOND: u8 = 2;

/// Which branches were woken, and the task to wake.
#[derive(Default)]
struct Marks {
    task: AtomicWaker,
    marked: AtomicU8,
}

/// The waker handed to one branch.
struct Branch {
    marks: Arc<Marks>,
    bit: u8,
}

impl Wake for Branch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.marks.marked.fetch_or(self.bit, Ordering::AcqRel);
        self.marks.task.wake();
    }
}

/// The first of two futures to finish (see the module documentation);
/// the other is left as it is, for the caller to drop.
pub struct Race<'a, A: Future, B> {
    first: Pin<&'a mut A>,
    second: Pin<&'a mut B>,
    marks: Arc<Marks>,
    first_waker: Waker,
    second_waker: Waker,
}

/// Run `first` and `second` until one finishes; on a wake-up of both,
/// `first` is polled first.
pub fn race<'a, A, B>(first: Pin<&'a mut A>, second: Pin<&'a mut B>) -> Race<'a, A, B>
where
    A: Future,
    B: Future<Output = A::Output>,
{
    let marks = Arc::new(Marks {
        task: AtomicWaker::new(),
        marked: AtomicU8::new(FIRST | SECOND),
    });
    let waker = |bit| {
        Waker::from(Arc::new(Branch {
            marks: Arc::clone(&marks),
            bit,
        }))
    };
    Race {
        first_waker: waker(FIRST),
        second_waker: waker(SECOND),
        first,
        second,
        marks,
    }
}

impl<A, B> Future for Race<'_, A, B>
where
    A: Future,
    B: Future<Output = A::Output>,
{
    type Output = A::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        let this = &mut *self;
        this.marks.task.register(cx.waker());
        let marked = this.marks.marked.swap(0, Ordering::AcqRel);
        if marked & FIRST != 0 {
            let mut own = Context::from_waker(&this.first_waker);
            if let Poll::Ready(v) = this.first.as_mut().poll(&mut own) {
                return Poll::Ready(v);
            }
        }
        if marked & SECOND != 0 {
            let mut own = Context::from_waker(&this.second_waker);
            if let Poll::Ready(v) = this.second.as_mut().poll(&mut own) {
                return Poll::Ready(v);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    /// Waits for its channel and counts how often it was polled.
    async fn counted(rx: oneshot::Receiver<u32>, polls: &AtomicUsize) -> u32 {
        let mut rx = rx;
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut rx).poll(cx).map(|r| r.unwrap_or(0))
        })
        .await
    }

    #[tokio::test]
    async fn a_wake_up_polls_only_the_branch_it_was_for() {
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let (p1, p2) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let first = std::pin::pin!(counted(rx1, &p1));
        let second = std::pin::pin!(async {
            // Wakes itself a few times before its value arrives.
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            counted(rx2, &p2).await
        });
        let mut both = std::pin::pin!(race(first, second));
        // First poll: both branches once.
        assert!(futures_poll(&mut both).await.is_none());
        assert_eq!(p1.load(Ordering::Relaxed), 1);
        tokio::task::yield_now().await;
        for _ in 0..5 {
            assert!(futures_poll(&mut both).await.is_none());
        }
        assert_eq!(p1.load(Ordering::Relaxed), 1, "first never woken");
        tx2.send(7).ok();
        assert_eq!(both.await, 7);
        assert_eq!(p1.load(Ordering::Relaxed), 1, "first never woken");
        drop(tx1);
    }

    #[tokio::test]
    async fn either_branch_finishes_the_race() {
        let (tx1, rx1) = oneshot::channel();
        let (_tx2, rx2) = oneshot::channel::<u32>();
        let (p1, p2) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let first = std::pin::pin!(counted(rx1, &p1));
        let second = std::pin::pin!(counted(rx2, &p2));
        let both = race(first, second);
        let send = async {
            tokio::task::yield_now().await;
            tx1.send(3).ok();
        };
        let (v, ()) = tokio::join!(both, send);
        assert_eq!(v, 3);
        assert_eq!(
            p2.load(Ordering::Relaxed),
            1,
            "second polled once, never woken"
        );
    }

    /// Poll once; `Some` if it finished.
    async fn futures_poll<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *f).poll(cx) {
                Poll::Ready(v) => Some(v),
                Poll::Pending => None,
            })
        })
        .await
    }
}
