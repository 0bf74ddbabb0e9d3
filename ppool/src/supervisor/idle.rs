//! Which idle worker takes the next job, as a rule with its own tests.
//!
//! **Placement.** A job goes to an idle local worker before an idle remote one (a local round
//! trip costs microseconds, a remote one a network's). Among those:
//! - a queued job goes to the one idle longest, so that work spreads evenly over workers and
//!   hosts (the most recently idle first keeps a trickle of tiny tasks on one worker, and a
//!   producer faster than one worker then gets half the throughput of two: `call_with` in the
//!   bench fell from 0.9 M to 0.5 M tasks/s);
//! - a blocking `call` driven by its caller goes to the one idle last, whose worker is likely
//!   still spinning for its next job: a round trip then costs no wake-up (taking the one idle
//!   longest made sync calls alternate between sleeping workers: 0.8 µs became 53 µs).
//!
//! How few workers tiny tasks need is the chunk size's business (`chunk::size`), not
//! placement's.
//!
//! **Wake-ups.** Each driver thread sleeps on a bell of its own. A queued job rings the bell of
//! the one worker this rule picks, and takes that worker out of the set, so the next job rings
//! another: a job wakes one thread, never all of them (as rayon's `new_jobs` wakes at most as
//! many sleepers as there are jobs). A summoned driver that finds no job puts its worker back.
//!
//! Every operation is O(1) (amortized): the set is two queues with lazy removal.

use std::collections::VecDeque;

/// The idle workers that no driver was summoned for.
#[derive(Debug)]
pub(crate) struct IdleSet {
    /// Idle local workers, the longest idle first; may hold stale entries.
    local: VecDeque<usize>,
    /// Idle remote workers, likewise.
    remote: VecDeque<usize>,
    /// Whether a worker is in the set (an entry of the stacks is stale unless this says so,
    /// and only its newest entry counts: see `push`).
    member: Vec<bool>,
    /// Whether a worker is local.
    is_local: Vec<bool>,
    len: usize,
}

impl IdleSet {
    /// An empty set over workers `0..is_local.len()`.
    pub(crate) fn new(is_local: Vec<bool>) -> Self {
        IdleSet {
            local: VecDeque::new(),
            remote: VecDeque::new(),
            member: vec![false; is_local.len()],
            is_local,
            len: 0,
        }
    }

    /// Room for `n` more workers, remote ones (hosts that joined a running pool).
    pub(crate) fn grow(&mut self, n: usize) {
        self.member.extend(std::iter::repeat_n(false, n));
        self.is_local.extend(std::iter::repeat_n(false, n));
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds worker `i` (a no-op if it is in already).
    pub(crate) fn push(&mut self, i: usize) {
        let Some(member) = self.member.get_mut(i) else {
            return;
        };
        if *member {
            return;
        }
        *member = true;
        self.len += 1;
        let stack = if self.is_local[i] {
            &mut self.local
        } else {
            &mut self.remote
        };
        // An older entry of `i` may still be in the queue: it stands for this membership, and
        // whichever entry is reached first takes it (`member` is false after that).
        stack.push_back(i);
        let bound = 2 * self.is_local.len() + 16;
        if stack.len() > bound {
            Self::compact(stack, &self.member);
        }
    }

    /// Takes worker `i` out (a no-op if it is not in).
    pub(crate) fn remove(&mut self, i: usize) {
        if let Some(member) = self.member.get_mut(i)
            && *member
        {
            *member = false;
            self.len -= 1;
        }
    }

    /// Takes out the worker a queued job goes to: the local one idle longest, else the remote
    /// one idle longest.
    pub(crate) fn pop(&mut self) -> Option<usize> {
        self.take(VecDeque::pop_front)
    }

    /// Takes out the worker a caller drives itself: the local one idle last, else the remote
    /// one idle last.
    pub(crate) fn pop_warm(&mut self) -> Option<usize> {
        self.take(VecDeque::pop_back)
    }

    fn take(&mut self, next: fn(&mut VecDeque<usize>) -> Option<usize>) -> Option<usize> {
        for queue in [&mut self.local, &mut self.remote] {
            while let Some(i) = next(queue) {
                if self.member[i] {
                    self.member[i] = false;
                    self.len -= 1;
                    return Some(i);
                }
            }
        }
        None
    }

    /// Drops stale entries, and all but the oldest entry of each member.
    fn compact(stack: &mut VecDeque<usize>, member: &[bool]) {
        let mut seen = vec![false; member.len()];
        stack.retain(|&i| {
            let keep = member[i] && !seen[i];
            seen[i] = true;
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_before_remote_and_the_longest_idle_first() {
        // Workers 0 and 1 are local, 2 and 3 remote.
        let mut idle = IdleSet::new(vec![true, true, false, false]);
        for i in [2, 0, 3, 1] {
            idle.push(i);
        }
        assert_eq!(idle.len(), 4);
        assert_eq!(idle.pop(), Some(0));
        assert_eq!(idle.pop(), Some(1));
        assert_eq!(idle.pop(), Some(2));
        assert_eq!(idle.pop(), Some(3));
        assert_eq!(idle.pop(), None);
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn a_caller_takes_the_worker_idle_last_local_first() {
        let mut idle = IdleSet::new(vec![true, true, false, false]);
        for i in [2, 0, 3, 1] {
            idle.push(i);
        }
        assert_eq!(idle.pop_warm(), Some(1));
        assert_eq!(idle.pop(), Some(0));
        assert_eq!(idle.pop_warm(), Some(3));
        assert_eq!(idle.pop_warm(), Some(2));
        assert_eq!(idle.pop_warm(), None);
    }

    #[test]
    fn a_removed_worker_is_never_picked_and_a_readded_one_counts_once() {
        let mut idle = IdleSet::new(vec![true; 3]);
        idle.push(0);
        idle.push(1);
        idle.push(2);
        idle.remove(1);
        idle.push(0); // already in: no-op
        assert_eq!(idle.len(), 2);
        idle.remove(0);
        idle.push(0); // back in, now the most recent
        assert_eq!(idle.pop(), Some(0), "its older entry stands for it");
        assert_eq!(idle.pop(), Some(2));
        assert_eq!(idle.pop(), None, "a stale entry of 0 or 1 was picked");
    }

    #[test]
    fn churn_keeps_the_queues_bounded() {
        let n = 8;
        let mut idle = IdleSet::new(vec![false; n]);
        for round in 0..10_000 {
            let i = round % n;
            idle.push(i);
            idle.remove(i);
            idle.push(i);
        }
        assert!(idle.remote.len() <= 2 * n + 17, "{}", idle.remote.len());
        let mut got: Vec<usize> = std::iter::from_fn(|| idle.pop()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..n).collect::<Vec<_>>());
    }
}
