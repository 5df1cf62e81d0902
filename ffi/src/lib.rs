//! C ABI of tidemalloc (placeholder until its own issue lands).
