//! Intrusive doubly linked lists: the links live in the nodes (page descriptors, segment
//! headers), so lists cost no memory of their own. The caller guarantees that every node on
//! a list is live and on that list only, and that one thread at a time changes a list and
//! its nodes' links (the owner of the heap, or the holder of the list's lock).
//!
//! Links are `Cell`s and nodes are passed by shared reference: descriptors are read by other
//! threads (a remote `free` reads a page's block size), so no `&mut` to them is ever made.

use core::cell::Cell;
use core::ptr;

/// A node that carries its own links.
pub trait Node {
    /// The (prev, next) links.
    fn links(&self) -> (&Cell<*mut Self>, &Cell<*mut Self>);
}

/// A list of nodes, with its ends.
pub struct List<T> {
    pub first: Cell<*mut T>,
    pub last: Cell<*mut T>,
}

impl<T: Node> List<T> {
    pub const fn new() -> Self {
        List { first: Cell::new(ptr::null_mut()), last: Cell::new(ptr::null_mut()) }
    }

    /// The first node, if any.
    #[inline(always)]
    pub fn first(&self) -> *mut T {
        self.first.get()
    }

    /// Forgets every node (their links are left as they are).
    pub fn clear(&self) {
        self.first.set(ptr::null_mut());
        self.last.set(ptr::null_mut());
    }

    pub fn push_front(&self, n: &T) {
        let first = self.first.get();
        let (prev, next) = n.links();
        prev.set(ptr::null_mut());
        next.set(first);
        let np = n as *const T as *mut T;
        if first.is_null() {
            self.last.set(np);
        } else {
            // SAFETY: nodes on the list are live.
            unsafe { (*first).links().0.set(np) };
        }
        self.first.set(np);
    }

    pub fn push_back(&self, n: &T) {
        let last = self.last.get();
        let (prev, next) = n.links();
        prev.set(last);
        next.set(ptr::null_mut());
        let np = n as *const T as *mut T;
        if last.is_null() {
            self.first.set(np);
        } else {
            // SAFETY: nodes on the list are live.
            unsafe { (*last).links().1.set(np) };
        }
        self.last.set(np);
    }

    /// Takes `n` (which is on this list) off it.
    pub fn unlink(&self, n: &T) {
        let (prev, next) = n.links();
        let (p, x) = (prev.replace(ptr::null_mut()), next.replace(ptr::null_mut()));
        if p.is_null() {
            self.first.set(x);
        } else {
            // SAFETY: nodes on the list are live.
            unsafe { (*p).links().1.set(x) };
        }
        if x.is_null() {
            self.last.set(p);
        } else {
            // SAFETY: nodes on the list are live.
            unsafe { (*x).links().0.set(p) };
        }
    }

    pub fn move_front(&self, n: &T) {
        if !ptr::eq(self.first.get(), n) {
            self.unlink(n);
            self.push_front(n);
        }
    }

    pub fn move_back(&self, n: &T) {
        if !ptr::eq(self.last.get(), n) {
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
