//! CSV reports end to end (see api/src/routes/reports.rs).
