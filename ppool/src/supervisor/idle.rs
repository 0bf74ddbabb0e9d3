//! Which idle worker takes the next job, as a rule with its own tests.
//!
//! **Placement.** A job (queued, or a `call` driven by its caller) goes to an idle local
//! worker before an idle remote one (a local round trip costs microseconds, a remote one a
//! network's), and among those to the one that became idle last. That keeps as few workers
//! busy as the work needs: a trickle of tiny tasks stays on one or two warm workers instead of
//! spreading over a thousand, and the rest sleep.
//!
//! **Wake-ups.** Each driver thread sleeps on a bell of its own. A queued job rings the bell of
//! the one worker this rule picks, and takes that worker out of the set, so the next job rings
//! another: a job wakes one thread, never all of them (as rayon's `new_jobs` wakes at most as
//! many sleepers as there are jobs). A summoned driver that finds no job puts its worker back.
//!
//! Every operation is O(1) (amortized): the set is two stacks with lazy removal.

/// The idle workers that no driver was summoned for.
#[derive(Debug)]
pub(crate) struct IdleSet {
    /// Idle local workers, the most recently idle last; may hold stale entries.
    local: Vec<usize>,
    /// Idle remote workers, likewise.
    remote: Vec<usize>,
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
            local: Vec::new(),
            remote: Vec::new(),
            member: vec![false; is_local.len()],
            is_local,
            len: 0,
        }
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
        // An older, stale entry of `i` may still be in the stack; it is skipped when reached
        // only after this one was taken, because then `member` is false again.
        stack.push(i);
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

    /// Takes out the worker the next job goes to: the most recently idle local one, else the
    /// most recently idle remote one.
    pub(crate) fn pop(&mut self) -> Option<usize> {
        for stack in [&mut self.local, &mut self.remote] {
            while let Some(i) = stack.pop() {
                if self.member[i] {
                    self.member[i] = false;
                    self.len -= 1;
                    return Some(i);
                }
            }
        }
        None
    }

    /// Drops stale entries, and all but the newest entry of each member.
    fn compact(stack: &mut Vec<usize>, member: &[bool]) {
        let mut seen = vec![false; member.len()];
        let mut kept: Vec<usize> = Vec::with_capacity(stack.len());
        for &i in stack.iter().rev() {
            if member[i] && !seen[i] {
                seen[i] = true;
                kept.push(i);
            }
        }
        kept.reverse();
        *stack = kept;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_before_remote_and_the_most_recently_idle_first() {
        // Workers 0 and 1 are local, 2 and 3 remote.
        let mut idle = IdleSet::new(vec![true, true, false, false]);
        for i in [2, 0, 3, 1] {
            idle.push(i);
        }
        assert_eq!(idle.len(), 4);
        assert_eq!(idle.pop(), Some(1));
        assert_eq!(idle.pop(), Some(0));
        assert_eq!(idle.pop(), Some(3));
        assert_eq!(idle.pop(), Some(2));
        assert_eq!(idle.pop(), None);
        assert_eq!(idle.len(), 0);
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
        assert_eq!(idle.pop(), Some(0));
        assert_eq!(idle.pop(), Some(2));
        assert_eq!(idle.pop(), None, "a stale entry of 0 or 1 was picked");
    }

    #[test]
    fn churn_keeps_the_stacks_bounded() {
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
