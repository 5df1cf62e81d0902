//! Intrusive doubly linked lists: the links live in the nodes (page descriptors, segment
//! headers), so lists cost no memory of their own. The caller guarantees that every node on
//! a list is live and on that list only.

use core::ptr;

/// A node that carries its own links.
pub trait Node {
    /// The (prev, next) links.
    fn links(&mut self) -> (&mut *mut Self, &mut *mut Self);
}

/// A list of nodes, with its ends.
pub struct List<T> {
    pub first: *mut T,
    pub last: *mut T,
}

impl<T> Clone for List<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for List<T> {}

impl<T: Node> List<T> {
    pub const fn new() -> Self {
        List { first: ptr::null_mut(), last: ptr::null_mut() }
    }

    pub fn push_front(&mut self, n: &mut T) {
        let first = self.first;
        let (prev, next) = n.links();
        *prev = ptr::null_mut();
        *next = first;
        if first.is_null() {
            self.last = n;
        } else {
            // SAFETY: nodes on the list are live.
            unsafe { *(*first).links().0 = n };
        }
        self.first = n;
    }

    pub fn push_back(&mut self, n: &mut T) {
        let last = self.last;
        let (prev, next) = n.links();
        *prev = last;
        *next = ptr::null_mut();
        if last.is_null() {
            self.first = n;
        } else {
            // SAFETY: nodes on the list are live.
            unsafe { *(*last).links().1 = n };
        }
        self.last = n;
    }

    /// Takes `n` (which is on this list) off it.
    pub fn unlink(&mut self, n: &mut T) {
        let (prev, next) = n.links();
        let (p, x) = (*prev, *next);
        *prev = ptr::null_mut();
        *next = ptr::null_mut();
        if p.is_null() {
            self.first = x;
        } else {
            // SAFETY: nodes on the list are live.
            unsafe { *(*p).links().1 = x };
        }
        if x.is_null() {
            self.last = p;
        } else {
            // SAFETY: nodes on the list are live.
            unsafe { *(*x).links().0 = p };
        }
    }

    pub fn move_front(&mut self, n: &mut T) {
        if !ptr::eq(self.first, n) {
            self.unlink(n);
            self.push_front(n);
        }
    }

    pub fn move_back(&mut self, n: &mut T) {
        if !ptr::eq(self.last, n) {
            self.unlink(n);
            self.push_back(n);
        }
    }
}

impl<T: Node> Default for List<T> {
    fn default() -> Self {
        Self::new()
    }
}
