//! PostgreSQL end-to-end tests (filled in below).
